"""FLOPs of a schedule on a prompt, and the solvers that meet a FLOPs budget.

"Budget" = the fraction of the baseline (AIM off) LLM prefill FLOPs a request may spend. The
solver searches merge ratios and pruning windows and returns the schedule whose *executed*
FLOPs come closest to the budget from below (AIM's "broad range of efficiency requirements").
A whole-prefill budget (`budget:<b>,encoder:auto`, the project's extension) also counts the
vision encoder and picks its keep fraction (`solve_prefill_budget`).
Plain Python (no torch) so the gateway can solve per request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

from aim_vllm.core.flops import LLMShape, executed_prefill_flops, prefill_flops
from aim_vllm.core.schedule import AimSchedule, paper_prune_layers
from aim_vllm.core.token_counts import merged_token_count


@dataclass(frozen=True)
class VisualLayout:
    """The visual tokens of one prompt as the merger sees them.

    Attributes:
        frame_tokens: tokens of each independently merged group (video frame or image crop).
        extra_tokens: visual tokens that are never merged (e.g. LLaVA-OV's newline tokens).
    """

    frame_tokens: tuple[int, ...]
    extra_tokens: int = 0

    @property
    def num_visual(self) -> int:
        return sum(self.frame_tokens) + self.extra_tokens

    def merged(self, ratio: float) -> int:
        """Visual tokens entering the LLM after merging at `ratio`."""
        return sum(merged_token_count(t, ratio) for t in self.frame_tokens) + self.extra_tokens


@dataclass(frozen=True)
class FlopsEstimate:
    """LLM prefill FLOPs of one prompt under a schedule, with the token counts behind them."""

    baseline: float
    paper: float
    executed: float
    visual_in: int
    visual_merged: int
    visual_kept: tuple[int, ...]

    @property
    def ratio(self) -> float:
        """Paper-convention FLOPs relative to AIM off."""
        return self.paper / self.baseline

    @property
    def executed_ratio(self) -> float:
        """Executed FLOPs relative to AIM off."""
        return self.executed / self.baseline


def estimate_flops(
    schedule: AimSchedule, shape: LLMShape, layout: VisualLayout, text_tokens: int
) -> FlopsEstimate:
    """Baseline, paper-convention and executed prefill FLOPs of `schedule` on one prompt."""
    schedule.check_depth(shape.num_layers)
    merged = layout.merged(schedule.merge_ratio)
    kept = schedule.visual_kept(merged, shape.num_layers)
    tokens_after = [text_tokens + k for k in kept]
    baseline = prefill_flops([text_tokens + layout.num_visual] * shape.num_layers, shape)
    return FlopsEstimate(
        baseline=baseline,
        paper=prefill_flops(tokens_after, shape),
        executed=executed_prefill_flops(text_tokens + merged, tokens_after, shape),
        visual_in=layout.num_visual,
        visual_merged=merged,
        visual_kept=tuple(kept),
    )


def solve_budget(
    budget: float, shape: LLMShape, layout: VisualLayout, text_tokens: int, prune: bool = True
) -> AimSchedule:
    """Schedule whose executed FLOPs ratio is the largest not above `budget`.

    Candidates: no pruning, or the paper's pruning window (its width) starting at any layer,
    each with the merge ratio found by bisection over per-frame token counts (FLOPs grow
    monotonically with it). Ties go to less merging. When nothing fits, the cheapest schedule.
    `prune=False`: merging alone (an engine that cannot prune).
    """
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    return _solve(budget, shape, layout, text_tokens, prune)


@lru_cache(maxsize=4096)
def _solve(
    budget: float, shape: LLMShape, layout: VisualLayout, text_tokens: int, prune: bool
) -> AimSchedule:
    if budget >= 1.0 or not layout.frame_tokens:
        return AimSchedule()
    l1, l2 = paper_prune_layers(shape.num_layers)
    windows = [None] + [(s, min(shape.num_layers, s + l2 - l1)) for s in range(shape.num_layers) if prune]
    largest = max(layout.frame_tokens)
    ratios = [k / largest for k in range(1, largest + 1)]

    def cost(schedule: AimSchedule) -> float:
        return estimate_flops(schedule, shape, layout, text_tokens).executed_ratio

    scored = []
    for window in windows:
        ratio = _largest_under_budget(ratios, lambda r, w=window: cost(AimSchedule(r, w)), budget)
        scored.append((cost(AimSchedule(ratio, window)), AimSchedule(ratio, window)))
    feasible = [item for item in scored if item[0] <= budget]
    if feasible:
        return max(feasible, key=lambda item: (item[0], item[1].merge_ratio))[1]
    return min(scored, key=lambda item: item[0])[1]


EncoderCost = Callable[[float], float]  # the prompt's vision-encoder FLOPs at a keep fraction
ENCODER_KEEPS = tuple(k / 20 for k in range(20, 0, -1))  # the keeps the prefill solver tries


def solve_prefill_budget(
    budget: float,
    shape: LLMShape,
    layout: VisualLayout,
    text_tokens: int,
    encoder_cost: EncoderCost,
    prune: bool = True,
) -> AimSchedule:
    """Schedule and encoder keep for `budget` of AIM off's whole prefill (vision encoder + LLM).

    Both parts spend the same fraction of their own AIM-off FLOPs as far as the encoder can go:
    the largest keep in `ENCODER_KEEPS` whose encoder FLOPs are within `budget` of the stock
    tower's (the smallest when none is: its stock early layers set a floor), then the LLM
    schedule of `solve_budget` for what the encoder left. A prompt without encoder FLOPs (no
    FLOPs model for its tower) leaves the whole budget to the LLM. `prune`: as in `solve_budget`.
    """
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    stock = encoder_cost(1.0)
    if stock <= 0.0:
        return solve_budget(budget, shape, layout, text_tokens, prune)
    keep = next((k for k in ENCODER_KEEPS if encoder_cost(k) <= budget * stock), ENCODER_KEEPS[-1])
    llm_off = estimate_flops(AimSchedule(), shape, layout, text_tokens).baseline
    llm_budget = (budget * (stock + llm_off) - encoder_cost(keep)) / llm_off
    schedule = solve_budget(min(1.0, max(llm_budget, 1e-9)), shape, layout, text_tokens, prune)
    return replace(schedule, encoder_keep=keep)


def _largest_under_budget(ratios: list[float], cost: Callable[[float], float], budget: float) -> float:
    """Largest of the increasing `ratios` with cost <= budget (bisection), else the smallest."""
    lo, hi = 0, len(ratios) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(ratios[mid]) <= budget else (lo, mid - 1)
    return ratios[lo]
