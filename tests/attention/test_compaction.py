"""Compacted attention metadata: stock layout when nothing is pruned, compacted slots otherwise."""

import torch

from aim_vllm.attention.compaction import compact_common_metadata, compact_slots

BLOCK = 4


def test_no_pruning_reproduces_the_stock_slot_mapping() -> None:
    """rows = scheduled and missing = 0 give vLLM's own slots (position -> block table)."""
    block_table = torch.tensor([[7, 2, 9], [5, 1, 3]])
    seq_lens = torch.tensor([10, 6])  # request 0: 3 cached + 7 new; request 1: 5 cached + 1 new
    rows = torch.tensor([7, 1])
    slots = compact_slots(block_table, seq_lens, rows, BLOCK)
    positions = [*range(3, 10), 5]
    reqs = [0] * 7 + [1]
    expected = [
        int(block_table[r, p // BLOCK]) * BLOCK + p % BLOCK for r, p in zip(reqs, positions, strict=True)
    ]
    assert slots.tolist() == expected


def test_compacted_sequences_are_shorter_and_packed() -> None:
    """A request missing 3 pruned tokens decodes into logical index seq_len - 3 - 1."""
    block_table = torch.tensor([[4, 6, 8]])
    slots = compact_slots(block_table, torch.tensor([9 - 3]), torch.tensor([1]), BLOCK)
    assert slots.tolist() == [6 * BLOCK + 1]  # logical index 5 -> block 1, offset 1


def test_common_metadata_fields() -> None:
    from vllm.v1.attention.backend import CommonAttentionMetadata

    common = CommonAttentionMetadata(
        query_start_loc=torch.tensor([0, 12, 13], dtype=torch.int32),
        query_start_loc_cpu=torch.tensor([0, 12, 13], dtype=torch.int32),
        seq_lens=torch.tensor([12, 20], dtype=torch.int32),
        num_reqs=2,
        num_actual_tokens=13,
        max_query_len=12,
        max_seq_len=20,
        block_table_tensor=torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], dtype=torch.int32),
        slot_mapping=torch.arange(13, dtype=torch.int64),
    )
    # request 0 is a prefill pruned to 7 rows at this layer; request 1 decodes missing 4 tokens
    out = compact_common_metadata(
        common, torch.tensor([7, 1]), torch.tensor([5, 4]), BLOCK, torch.tensor([12, 20])
    )
    assert out.query_start_loc_cpu.tolist() == [0, 7, 8]
    assert out.seq_lens.tolist() == [7, 16]
    assert (out.num_actual_tokens, out.max_query_len, out.max_seq_len) == (8, 7, 16)
    assert out.slot_mapping.tolist() == [*range(7), 8 * BLOCK + 3]  # logical 15: block [1, 3] = 8
    assert common.seq_lens.tolist() == [12, 20]  # the step's shared metadata is never mutated
