"""Attention metadata of compacted sequences (backend-neutral; vllm==0.32.0 `CommonAttentionMetadata`).

In a layer after pruning, request r has `rows[r]` query rows in this step and its KV cache
lacks `missing[r]` pruned prompt tokens. Its sequence is stored compacted, in original order,
at logical indices [0, seq_len_r - missing_r) of the *same* block table, so:
  seq_len'_r = seq_len_r - missing_r,   queries are the last rows[r] of it (bottom-right causal),
  slot of logical index i = block_table[r, i // block_size] * block_size + i % block_size.
With rows = scheduled rows and missing = 0 this reproduces vLLM's own metadata exactly.
Any backend whose builder takes `CommonAttentionMetadata` (CPU, FlashAttention, Triton, FlexAttention)
can build its metadata from the result (`backends.py`).

Counts are CPU tensors (the decoder's plan); the step's tensors (query_start_loc, seq_lens,
block table, slots) stay on their device (a GPU in a CUDA engine) and the results go there too:
no device synchronisation happens here.
"""

from __future__ import annotations

from dataclasses import replace

import torch


def compact_slots(
    block_table: torch.Tensor, seq_lens: torch.Tensor, rows: torch.Tensor, block_size: int
) -> torch.Tensor:
    """Slots of the last rows[r] logical indices of each compacted sequence r, in batch order.

    Args:
        block_table: [R, max_blocks] on the KV cache's device.
        seq_lens, rows: [R] CPU int tensors (compacted sequence lengths, query rows).
    Returns:
        [sum(rows)] int64 slots on the block table's device.
    """
    num_reqs = rows.shape[0]
    req_of_row = torch.repeat_interleave(torch.arange(num_reqs), rows)
    starts = torch.cumsum(rows, 0) - rows  # first row of each request
    logical = torch.arange(int(rows.sum())) - starts[req_of_row] + (seq_lens - rows)[req_of_row]
    device = block_table.device
    blocks = block_table[req_of_row.to(device), (logical // block_size).to(device)]
    return blocks.to(torch.int64) * block_size + (logical % block_size).to(device)


def compact_common_metadata(
    common, rows: torch.Tensor, missing: torch.Tensor, block_size: int, seq_lens_cpu: torch.Tensor
):
    """`CommonAttentionMetadata` for requests with `rows` query rows and `missing` absent KV tokens.

    Args:
        common: the step's metadata (unpadded: pruning runs eager, without CUDA-graph padding).
        rows, missing: [num_reqs] CPU int tensors.
        block_size: block size of `common.block_table_tensor` (the builder's).
        seq_lens_cpu: [num_reqs] the step's sequence lengths, on the CPU.
    """
    num_reqs = common.num_reqs
    rows, missing = rows.to(torch.int32), missing.to(torch.int32)
    seq_lens = (seq_lens_cpu[:num_reqs] - missing).to(torch.int32)
    query_start_loc = torch.zeros(num_reqs + 1, dtype=common.query_start_loc_cpu.dtype)
    query_start_loc[1:] = torch.cumsum(rows, 0)
    slots = compact_slots(common.block_table_tensor, seq_lens, rows, block_size)
    return replace(
        common,
        query_start_loc=query_start_loc.to(common.query_start_loc.device),
        query_start_loc_cpu=query_start_loc,
        seq_lens=seq_lens.to(common.seq_lens.device, common.seq_lens.dtype),
        seq_lens_cpu_upper_bound=seq_lens,
        num_actual_tokens=int(rows.sum()),
        max_query_len=int(rows.max()) if num_reqs else 0,
        max_seq_len=int(seq_lens.max()) if num_reqs else 0,
        slot_mapping=slots.to(common.slot_mapping.dtype),
        positions=None,
        _num_computed_tokens_cache=None,  # derived from the stock query_start_loc / seq_lens
        _token_to_req_indices_cache=None,
    )
