"""AIM's CPU attention backend: vLLM's CPU_ATTN whose metadata can be rebuilt for compacted sequences.

Registered by the plugin over `AttentionBackendEnum.CPU_ATTN` (vllm==0.32.0
`v1/attention/backends/cpu_attn.py`). Kernels, KV layout and numerics are CPU_ATTN's own; the
only addition is that every metadata object remembers the `CommonAttentionMetadata` and builder
it came from, so the pruning decoder can build the metadata of each layer's compacted
sequences (`compaction.compact_common_metadata`) with the same builder.

GPU port: the same subclassing works for FLASH_ATTN / TRITON_ATTN builders (they also build
from `CommonAttentionMetadata`); FA3's AOT `scheduler_metadata` and any persistent CUDA-graph
buffers must be rebuilt per compacted layout, so pruning runs eager (no CUDA graphs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionMetadata,
    CPUAttentionMetadataBuilder,
)


@dataclass
class AimCPUAttentionMetadata(CPUAttentionMetadata):
    aim_common: Any = None  # the CommonAttentionMetadata this was built from
    aim_builder: Any = None  # the builder that built it

    def rebuild(self, common: Any) -> AimCPUAttentionMetadata:
        """Metadata for another `CommonAttentionMetadata` of the same batch (e.g. compacted)."""
        return self.aim_builder.build(0, common)


class AimCPUAttentionMetadataBuilder(CPUAttentionMetadataBuilder):
    def build(self, common_prefix_len: int, common_attn_metadata: Any, fast_build: bool = False):
        base = super().build(common_prefix_len, common_attn_metadata, fast_build)
        fields = {name: getattr(base, name) for name in base.__dataclass_fields__}
        return AimCPUAttentionMetadata(**fields, aim_common=common_attn_metadata, aim_builder=self)


class AimCPUAttentionBackend(CPUAttentionBackend):
    @staticmethod
    def get_builder_cls() -> type[AimCPUAttentionMetadataBuilder]:
        return AimCPUAttentionMetadataBuilder
