"""How many KV slots a pruned request needs per layer group (Design C; plain Python, no vLLM import).

A pruned layer l stores its KV compacted: `seq_len - missing[l]` tokens at the front of its block
table (`attention.compaction`), where `missing[l]` are the visual tokens pruned before l
(`pruning.state.PruneRecord.missing`). Layers are grouped into KV-cache groups of equal
contiguous stages (`kv.spec`); a group's blocks serve all its layers, so it needs room for its
fullest layer: `seq_len - min(missing[lo:hi])`. The scheduler (`kv.manager`) decides each
prefill's record here and sends it to the workers with the step, which prune exactly that
(`pruning.decoder`); when the scheduler cannot tell, it allocates for every token
(over-allocating is always safe).
"""

from __future__ import annotations

from collections.abc import Sequence

from aim_vllm.pruning.state import PruneRecord, RequestStep, decide


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def stages(num_layers: int, layers_per_group: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) layer ranges of equal size; `layers_per_group` must divide `num_layers`
    (vLLM pads unequal groups with layers that hold memory and do nothing)."""
    if layers_per_group < 1 or num_layers % layers_per_group:
        raise ValueError(f"{layers_per_group} layers per KV group does not divide {num_layers} layers")
    return [(lo, lo + layers_per_group) for lo in range(0, num_layers, layers_per_group)]


def prefill_record(req: RequestStep, computed: int, scheduled: int, num_layers: int) -> PruneRecord:
    """What a prefill step prunes, as the scheduler decides it for Design C's allocation (an
    engine with Design C can prune, so no engine reason rules it out).

    `computed`: tokens the request already has cached; `scheduled`: tokens this step computes.
    """
    return decide(req, computed, scheduled, "", num_layers)


def group_missing(missing: Sequence[int], layers: tuple[int, int]) -> int:
    """Tokens a group of layers [lo, hi) can leave out: its fullest layer's count."""
    lo, hi = layers
    return min(missing[lo:hi]) if missing else 0


def blocks_needed(rows_per_layer: Sequence[int], block_size: int) -> list[int]:
    """Blocks each layer's KV fills with `rows_per_layer` tokens (the schedule's prediction)."""
    return [cdiv(rows, block_size) for rows in rows_per_layer]
