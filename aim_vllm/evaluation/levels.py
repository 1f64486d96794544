"""Level specs on the command line, and baselines at the token counts of an AIM level.

A spec is a gateway level (`X-AIM-Level` grammar, server/knob.py) with `+` instead of `,`
between the items of an explicit level, so a list of specs can itself be comma separated:
    off,balanced,budget:0.1,merge:0.25+prune:3-5,merge:0.25+method:pool+prune:3-5
`baselines_for(preset, ...)` gives, for one preset, AIM's explicit schedule and the issue's
baselines at the same token counts: uniform pooling and random drop instead of merging (same
pruning), FastV-style single-layer pruning keeping the fraction whose executed FLOPs match AIM's,
merge only and prune only.
"""

from __future__ import annotations

from aim_vllm.core.budget import VisualLayout, estimate_flops
from aim_vllm.core.flops import LLMShape
from aim_vllm.core.schedule import AimSchedule, preset_schedule

BASELINE_NAMES = ("pool", "random", "fastv", "merge-only", "prune-only")  # `baselines_for`'s rows


def parse_specs(text: str) -> list[str]:
    """Comma-separated specs -> gateway level strings (each `+` becomes `,`)."""
    specs = [spec.strip() for spec in text.split(",") if spec.strip()]
    if not specs:
        raise ValueError("give at least one level")
    return [spec.replace("+", ",") for spec in specs]


def level_of(schedule: AimSchedule) -> str:
    """The gateway level string of an explicit schedule."""
    items = [f"merge:{_decimal(schedule.merge_ratio)}"]
    if schedule.prune_layers is not None:
        items.append("prune:{}-{}".format(*schedule.prune_layers))
    if schedule.merge_method != "aim":
        items.append(f"method:{schedule.merge_method}")
    if schedule.prune_method != "pagerank":
        items.append(f"importance:{schedule.prune_method}")
    if schedule.prune_keep is not None:
        items.append(f"keep:{_decimal(schedule.prune_keep)}")
    return ",".join(items)


def _decimal(value: float) -> str:
    """Plain decimal text (the level grammar has no exponents): 0.25 -> '0.25', 1.0 -> '1'."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


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
