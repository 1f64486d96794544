"""Levels on the command line, and baselines at the token counts of an AIM level.

Levels are in the text form of `aim_vllm.core.level` (the gateway's `X-AIM-Level`), one per
argument: `--levels off balanced budget:0.1 merge:0.25,method:pool,prune:3-5`.
`baselines_for(preset, ...)` gives, for one preset, AIM's explicit schedule and the issue's
baselines at the same token counts: uniform pooling, random drop and vLLM's EVS criterion instead
of merging (same pruning; EVS asked of video items only), FastV-style single-layer pruning keeping
the fraction whose executed FLOPs match AIM's, merge only and prune only.
"""

from __future__ import annotations

from aim_vllm.core.budget import VisualLayout, estimate_flops
from aim_vllm.core.flops import LLMShape
from aim_vllm.core.level import AimLevel, parse_text
from aim_vllm.core.schedule import AimSchedule, preset_schedule

BASELINE_NAMES = ("pool", "random", "evs", "fastv", "merge-only", "prune-only")  # `baselines_for`'s rows


def canonical_levels(specs: list[str]) -> list[str]:
    """Each level in its canonical text form, duplicates dropped (LevelError on a bad one)."""
    if not specs:
        raise ValueError("give at least one level")
    return list(dict.fromkeys(parse_text(spec).text for spec in specs))


def level_of(schedule: AimSchedule) -> str:
    """The canonical text form of an explicit schedule."""
    return AimLevel(schedule=schedule).text


def baselines_for(preset: str, shape: LLMShape, layout: VisualLayout, text_tokens: int) -> dict[str, str]:
    """name -> level: AIM at `preset` and the baselines at its token counts (see module docstring)."""
    aim = preset_schedule(preset, shape.num_layers)
    assert aim.prune_layers is not None
    l1 = aim.prune_layers[0]
    target = estimate_flops(aim, shape, layout, text_tokens).executed
    keep = _matching_keep(aim, l1, shape, layout, text_tokens, target)
    schedules = {
        f"aim-{preset}": aim,
        "pool": AimSchedule(aim.merge_ratio, aim.prune_layers, merge_method="pool"),
        "random": AimSchedule(aim.merge_ratio, aim.prune_layers, merge_method="random"),
        "evs": AimSchedule(aim.merge_ratio, aim.prune_layers, merge_method="evs"),
        "fastv": AimSchedule(aim.merge_ratio, (l1, l1 + 1), prune_method="fastv", prune_keep=keep),
        "merge-only": AimSchedule(aim.merge_ratio),
        "prune-only": AimSchedule(1.0, aim.prune_layers),
    }
    assert tuple(schedules)[1:] == BASELINE_NAMES
    return {name: level_of(schedule) for name, schedule in schedules.items()}


def _matching_keep(
    aim: AimSchedule, layer: int, shape: LLMShape, layout, text_tokens: int, target: float
) -> float:
    """Single-layer keep fraction at `layer` whose executed FLOPs are closest to `target` (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        trial = AimSchedule(aim.merge_ratio, (layer, layer + 1), prune_keep=mid)
        if estimate_flops(trial, shape, layout, text_tokens).executed > target:
            hi = mid
        else:
            lo = mid
    return lo
