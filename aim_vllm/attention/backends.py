"""Attention backends whose metadata can be rebuilt for compacted sequences: one mechanism for all.

The AIM model gives each attention layer of its decoder a subclass of the backend vLLM chose for
that layer (`install_compaction`; vllm==0.32.0 `Attention.attn_backend`, which both model runners
read when they group layers and create builders). Kernels, impl, KV layout and numerics are the
backend's own. Its builder tags every metadata object it builds with the
`CommonAttentionMetadata` and the builder it came from, so the pruning decoder can build the
metadata of each compacted layout (`compaction.compact_common_metadata`) with `rebuild`:
- REUSE: the runner's builder builds the compacted layouts too; for backends whose `build()`
  derives everything from its input: CPU_ATTN (scheduler metadata computed per call), FLASH_ATTN
  (eager: the FA3 AOT plan is a fresh tensor; only full CUDA graphs keep it in the builder, and
  pruning refuses CUDA graphs), TRITON_ATTN (references its input; scratch lives in one kernel call);
- CLONE: one builder of its own per distinct layout of a step, for backends whose builders write
  persistent buffers that a second `build()` in the same step would overwrite: FLEX_ATTENTION.
Any other backend (FLASHINFER plans wrappers that live in its builder; MLA backends; ...) is left
as it is: pruning is skipped for every request, reported, with the reason this module returns.
"""

from __future__ import annotations

from dataclasses import replace
from enum import Enum
from typing import Any


class Rebuild(Enum):
    REUSE = "reuse"
    CLONE = "clone"


COMPACTION_SUPPORT: dict[str, Rebuild] = {
    "CPU_ATTN": Rebuild.REUSE,
    "FLASH_ATTN": Rebuild.REUSE,
    "TRITON_ATTN": Rebuild.REUSE,
    "FLEX_ATTENTION": Rebuild.CLONE,
}

_SUBCLASSES: dict[type, type] = {}  # stock backend -> its AIM subclass (one per process)


def unsupported_reason(backend_name: str) -> str:
    """'' when pruning can run on `backend_name`, else why not (for `usage.aim.pruning`)."""
    if backend_name in COMPACTION_SUPPORT:
        return ""
    return (
        f"attention backend {backend_name} cannot rebuild metadata for compacted sequences "
        f"(supported: {', '.join(COMPACTION_SUPPORT)})"
    )


def install_compaction(attention_layers: list[Any]) -> str:
    """Swap each layer's backend for its AIM subclass; '' on success, else the reason it cannot.

    Layers are vLLM `Attention` modules, before the runner initialises its attention groups.
    Nothing changes unless every layer's backend is supported.
    """
    for layer in attention_layers:
        reason = unsupported_reason(layer.attn_backend.get_name())
        if reason:
            return reason
    for layer in attention_layers:
        layer.attn_backend = aim_backend(layer.attn_backend)
    return ""


def aim_backend(backend: type) -> type:
    """`backend`'s AIM subclass (the same class for every layer, so layers still share a group)."""
    if getattr(backend, "aim_compaction", False):
        return backend
    if backend not in _SUBCLASSES:
        builder = _aim_builder(backend.get_builder_cls(), COMPACTION_SUPPORT[backend.get_name()])
        _SUBCLASSES[backend] = type(
            f"Aim{backend.__name__}",
            (backend,),
            {
                "aim_compaction": True,
                "get_builder_cls": staticmethod(lambda: builder),
                "__module__": __name__,
            },
        )
    return _SUBCLASSES[backend]


def _aim_builder(base: type, policy: Rebuild) -> type:
    class AimBuilder(base):  # type: ignore[misc, valid-type]
        aim_rebuild = policy

        def build(self, common_prefix_len: int, common_attn_metadata: Any, *args: Any, **kwargs: Any):
            metadata = super().build(common_prefix_len, common_attn_metadata, *args, **kwargs)
            return _tag(metadata, common_attn_metadata, self)

        def update_block_table(self, metadata: Any, blk_table: Any, slot_mapping: Any):
            # vLLM reuses one group's metadata for another KV-cache group with its own block table
            new = super().update_block_table(metadata, blk_table, slot_mapping)
            common = replace(metadata.aim_common, block_table_tensor=blk_table, slot_mapping=slot_mapping)
            return _tag(new, common, self)

        def layout_builder(self, slot: int):
            """The builder of a step's `slot`-th compacted layout (module docstring)."""
            if self.aim_rebuild is Rebuild.REUSE:
                return self
            clones = self.__dict__.setdefault("_aim_clones", [])
            while len(clones) <= slot:
                clones.append(type(self)(self.kv_cache_spec, self.layer_names, self.vllm_config, self.device))
            return clones[slot]

    AimBuilder.__name__ = AimBuilder.__qualname__ = f"Aim{base.__name__}"
    return AimBuilder


def _tag(metadata: Any, common: Any, builder: Any) -> Any:
    metadata.aim_common = common  # the CommonAttentionMetadata it was built from
    metadata.aim_builder = builder
    return metadata


def rebuild(stock: Any, common: Any, slot: int) -> Any:
    """Metadata of the compacted layout `common` for the layers whose step metadata is `stock`."""
    return stock.aim_builder.layout_builder(slot).build(0, common)


def block_size(stock: Any) -> int:
    """Block size of the block table in `stock.aim_common` (the builder's, i.e. the kernel's)."""
    return stock.aim_builder.kv_cache_spec.block_size
