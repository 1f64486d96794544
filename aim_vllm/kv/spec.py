"""Per-stage KV-cache groups for the AIM model's decoder layers (Design C; vllm==0.32.0).

vLLM's hybrid allocator gives each KV-cache group its own block table, all groups drawing blocks of
one page size from one pool (`kv_cache_utils._get_kv_cache_groups_uniform_page_size`). Every decoder
attention layer of the AIM model returns an `AimStageSpec` naming its stage (contiguous layers,
`$AIM_VLLM_KV_LAYERS_PER_GROUP` of them, default 1); specs of different stages refuse to merge,
so each stage becomes a group, and its `AimManager` (`kv.manager`) allocates only what the
stage's layers keep.

Used only when the engine runs AIM's scheduler (`kv.scheduler.AimScheduler`, which feeds the
managers the requests) and the hybrid allocator is on; otherwise every layer keeps vLLM's own
`FullAttentionSpec`: one group, every token in every layer (Design A), and the reason is logged.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, fields, replace
from typing import Any

from aim_vllm.compat import FullAttentionSpec, KVCacheSpecRegistry
from aim_vllm.kv.plan import stages

logger = logging.getLogger(__name__)

LAYERS_PER_GROUP_ENV = "AIM_VLLM_KV_LAYERS_PER_GROUP"
# 1: one group per layer, each layer holds exactly its kept tokens. More layers per group: fewer
# groups (vLLM builds a block table, slot mapping and attention metadata per group every step),
# each holding what its fullest layer keeps.
DEFAULT_LAYERS_PER_GROUP = 1
_AIM_FIELDS = ("aim_layers", "aim_num_layers")


@dataclass(frozen=True, kw_only=True)
class AimStageSpec(FullAttentionSpec):
    """A full-attention layer whose KV holds the tokens its stage keeps: layers [lo, hi) of the
    decoder's `aim_num_layers`. Same page layout as `FullAttentionSpec`; only grouping differs."""

    aim_layers: tuple[int, int] = (0, 0)
    aim_num_layers: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        register()  # wherever a stage spec exists (worker, or engine core after unpickling)

    def __reduce__(self):  # unpickling and copies go through __init__, hence through register()
        return (_rebuild, (type(self), {f.name: getattr(self, f.name) for f in fields(self)}))

    @classmethod
    def merge(cls, specs: list[Any]) -> AimStageSpec:
        """Layers of one stage merge as `FullAttentionSpec` does; layers of different stages never."""
        stage = _stage(specs[0])
        if any(not isinstance(s, AimStageSpec) or _stage(s) != stage for s in specs):
            raise AssertionError("layers of different AIM stages hold different tokens")
        return replace(super().merge(specs), **dict(zip(_AIM_FIELDS, stage, strict=True)))

    def is_uniform_with_collection(self, kv_cache_specs: dict[str, Any]) -> bool:
        stage = _stage(self)
        return all(isinstance(s, AimStageSpec) and _stage(s) == stage for s in kv_cache_specs.values())


def _stage(spec: Any) -> tuple[Any, ...]:
    return tuple(getattr(spec, name, None) for name in _AIM_FIELDS)


def _rebuild(cls: type, values: dict[str, Any]) -> AimStageSpec:
    return cls(**values)


@functools.cache
def register() -> None:
    """Register `AimStageSpec -> AimManager` (once per process). vLLM registers its built-in specs
    only into an empty registry (`KVCacheSpecRegistry._ensure_registered`), so they go first."""
    from aim_vllm.kv.manager import AimManager

    KVCacheSpecRegistry._ensure_registered()
    KVCacheSpecRegistry.register(AimStageSpec, AimManager, uniform_type_base_spec=AimStageSpec)


def stage_spec(
    spec: Any, layer: int, num_layers: int, layers_per_group: int = DEFAULT_LAYERS_PER_GROUP
) -> Any:
    """`spec` (a layer's stock spec) as its stage's spec; other spec types are left as they are."""
    if type(spec) is not FullAttentionSpec or spec.sliding_window or spec.attention_chunk_size:
        return spec
    (lo, hi) = next(s for s in stages(num_layers, layers_per_group) if s[0] <= layer < s[1])
    values = {f.name: getattr(spec, f.name) for f in fields(spec)}
    return AimStageSpec(**values, aim_layers=(lo, hi), aim_num_layers=num_layers)


def per_layer_kv_reason(vllm_config: Any) -> str:
    """'' when pruned requests can hold less KV per layer in this engine, else why not."""
    from aim_vllm.pruning.support import AIM_SCHEDULER, uses_aim_scheduler

    if not uses_aim_scheduler(vllm_config):
        return f"the scheduler is not AIM's (--scheduler-cls {AIM_SCHEDULER})"
    if vllm_config.scheduler_config.disable_hybrid_kv_cache_manager:
        return "vLLM's hybrid KV cache manager is disabled"
    if vllm_config.kv_transfer_config is not None:
        return "a KV connector moves whole-sequence blocks"
    return ""


def install_stage_specs(attention_layers: list[Any], vllm_config: Any, announce: bool = True) -> str:
    """Make each decoder layer report its stage's spec; '' on success, else why not (logged)."""
    num_layers = len(attention_layers)
    reason = per_layer_kv_reason(vllm_config)
    if not reason:
        try:
            per_group = int(os.environ.get(LAYERS_PER_GROUP_ENV, DEFAULT_LAYERS_PER_GROUP))
            stages(num_layers, per_group)
        except ValueError as exc:
            reason = f"${LAYERS_PER_GROUP_ENV}: {exc}"
    if reason:
        if announce:
            logger.warning("aim-vllm: pruned requests keep every token's KV in every layer: %s", reason)
        return reason
    for layer_idx, layer in enumerate(attention_layers):
        layer.get_kv_cache_spec = _staged(layer.get_kv_cache_spec, layer_idx, num_layers, per_group)
    if announce:
        logger.info(
            "aim-vllm: per-layer KV allocation: %d KV-cache groups of %d layer(s); pruned requests "
            "hold only the tokens each group's fullest layer keeps",
            num_layers // per_group,
            per_group,
        )
    return ""


def _staged(original, layer: int, num_layers: int, layers_per_group: int):
    def get_kv_cache_spec(vllm_config: Any) -> Any:
        return stage_spec(original(vllm_config), layer, num_layers, layers_per_group)

    return get_kv_cache_spec
