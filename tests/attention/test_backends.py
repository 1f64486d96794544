"""The one compaction mechanism on each supported backend's real metadata builder (CPU-built).

vLLM 0.32's FLASH_ATTN, TRITON_ATTN and FLEX_ATTENTION builders construct and build on the CPU
(their kernels need a GPU, their metadata does not), so the mechanism the CUDA engine uses is
checked here on the builders themselves: the compacted layouts of a step carry exactly the
compacted fields, and building them never changes the step's own metadata (FLEX_ATTENTION's
builder writes persistent buffers: one builder per layout). Unsupported backends are refused.
"""

from __future__ import annotations

import pytest
import torch

from aim_vllm.attention.backends import (
    COMPACTION_SUPPORT,
    aim_backend,
    block_size,
    install_compaction,
    rebuild,
    unsupported_reason,
)
from aim_vllm.attention.compaction import compact_common_metadata

BLOCK = 16
SEQ_LENS = [40, 30]  # request 0: a 40-token prefill; request 1: decoding its 30th token


@pytest.fixture(scope="module")
def vllm_config(tiny_model_dir):
    from vllm.config import ModelConfig, VllmConfig

    config = VllmConfig(
        model_config=ModelConfig(model=str(tiny_model_dir), dtype="float32", enforce_eager=True)
    )
    config.cache_config.num_gpu_blocks = 8  # FLEX_ATTENTION sizes its buffers by the KV cache
    return config


def _builder(name: str, vllm_config):
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=32, dtype=torch.float32)
    backend = aim_backend(AttentionBackendEnum[name].get_class())
    return backend.get_builder_cls()(spec, ["layers.0.attn"], vllm_config, torch.device("cpu"))


def _step_common():
    from vllm.v1.attention.backend import CommonAttentionMetadata

    return CommonAttentionMetadata(
        query_start_loc=torch.tensor([0, 40, 41], dtype=torch.int32),
        query_start_loc_cpu=torch.tensor([0, 40, 41], dtype=torch.int32),
        seq_lens=torch.tensor(SEQ_LENS, dtype=torch.int32),
        num_reqs=2,
        num_actual_tokens=41,
        max_query_len=40,
        max_seq_len=40,
        block_table_tensor=torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32),
        slot_mapping=torch.tensor([*range(40), 4 * BLOCK + 13], dtype=torch.int64),
    )


def _fields(metadata) -> dict:
    return {
        name: getattr(metadata, name).clone()
        for name in ("query_start_loc", "seq_lens", "slot_mapping")
        if isinstance(getattr(metadata, name, None), torch.Tensor)
    }


@pytest.mark.parametrize("name", list(COMPACTION_SUPPORT))
def test_compacted_layouts_on_the_backends_own_builder(name: str, vllm_config) -> None:
    """Two layouts of one step (a prefill pruned to 20 then 8 rows, a decode missing 10 then 22
    tokens): each has its compacted fields, and the step's own metadata is left as it was."""
    stock = _builder(name, vllm_config).build(0, _step_common())
    assert type(stock).__module__.startswith("vllm.v1.attention.backends")  # the backend's own class
    before = _fields(stock)
    layouts = []
    for slot, (rows, missing) in enumerate((([20, 1], [20, 10]), ([8, 1], [32, 22]))):
        common = compact_common_metadata(
            stock.aim_common,
            torch.tensor(rows),
            torch.tensor(missing),
            block_size(stock),
            torch.tensor(SEQ_LENS),
        )
        layouts.append((rebuild(stock, common, slot), rows, missing))
    for metadata, rows, missing in layouts:
        seq_lens = [s - m for s, m in zip(SEQ_LENS, missing, strict=True)]
        assert metadata.seq_lens[:2].tolist() == seq_lens
        assert metadata.query_start_loc[:3].tolist() == [0, rows[0], rows[0] + rows[1]]
        assert metadata.num_actual_tokens == sum(rows)
        last = seq_lens[1] - 1  # request 1 decodes into the last logical index of its compacted sequence
        decode_slot = [3, 4, 5][last // BLOCK] * BLOCK + last % BLOCK
        prefill_slots = list(range(seq_lens[0] - rows[0], seq_lens[0]))  # request 0: blocks 0, 1, 2
        assert metadata.slot_mapping.tolist() == [*prefill_slots, decode_slot]
    for field, value in before.items():
        assert torch.equal(getattr(stock, field), value), f"building a layout changed the step's {field}"


def test_compaction_keeps_tensors_on_their_device() -> None:
    """Counts are CPU bookkeeping; the step's tensors and the results stay on the engine's device
    (here the meta device, which refuses mixing like a GPU does)."""
    from vllm.v1.attention.backend import CommonAttentionMetadata

    device = torch.device("meta")
    common = CommonAttentionMetadata(
        query_start_loc=torch.tensor([0, 40, 41], dtype=torch.int32, device=device),
        query_start_loc_cpu=torch.tensor([0, 40, 41], dtype=torch.int32),
        seq_lens=torch.tensor(SEQ_LENS, dtype=torch.int32, device=device),
        num_reqs=2,
        num_actual_tokens=41,
        max_query_len=40,
        max_seq_len=40,
        block_table_tensor=torch.zeros(2, 3, dtype=torch.int32, device=device),
        slot_mapping=torch.zeros(41, dtype=torch.int64, device=device),
    )
    out = compact_common_metadata(
        common, torch.tensor([20, 1]), torch.tensor([20, 10]), BLOCK, torch.tensor(SEQ_LENS)
    )
    assert {out.seq_lens.device, out.query_start_loc.device, out.slot_mapping.device} == {device}
    assert out.slot_mapping.shape == (21,)
    assert out.query_start_loc_cpu.tolist() == [0, 20, 21] and out.seq_lens_cpu_upper_bound.tolist() == [
        20,
        20,
    ]


class _Layer:
    def __init__(self, backend: type) -> None:
        self.attn_backend = backend


def test_unsupported_backend_is_left_alone_with_a_reason() -> None:
    """A backend whose builder cannot serve compacted layouts keeps vLLM's class; the reason names it."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    class OtherBackend(CPUAttentionBackend):
        @staticmethod
        def get_name() -> str:
            return "FLASHINFER"

    layers = [_Layer(CPUAttentionBackend), _Layer(OtherBackend)]
    reason = install_compaction(layers)
    assert reason == unsupported_reason("FLASHINFER") and reason.startswith("attention backend FLASHINFER")
    assert [layer.attn_backend for layer in layers] == [CPUAttentionBackend, OtherBackend]
    supported = [_Layer(CPUAttentionBackend), _Layer(CPUAttentionBackend)]
    assert install_compaction(supported) == ""
    assert supported[0].attn_backend is supported[1].attn_backend  # one subclass: layers share a group
    assert issubclass(supported[0].attn_backend, CPUAttentionBackend)
    assert aim_backend(supported[0].attn_backend) is supported[0].attn_backend
