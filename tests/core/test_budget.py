"""The FLOPs-budget solvers land within 5% of the asked budget (LLM, or whole prefill with the encoder)."""

import pytest

from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.budget import ENCODER_KEEPS, estimate_flops, solve_budget, solve_prefill_budget
from aim_vllm.core.encoder_flops import VisionShape
from aim_vllm.core.schedule import AimSchedule


@pytest.mark.parametrize(
    "arch", ["llava-onevision-7b", "llava-onevision-0.5b", "llava-1.5-7b", "qwen2.5-vl-7b"]
)
@pytest.mark.parametrize("budget", [0.9, 0.5, 0.3, 0.15, 0.1])
def test_solver_meets_budget(arch: str, budget: float) -> None:
    spec = ARCHITECTURES[arch]
    layout = spec.layout(frames=16) if spec.frame_tokens != 576 else spec.layout(images=1)
    schedule = solve_budget(budget, spec.llm, layout, text_tokens=60)
    ratio = estimate_flops(schedule, spec.llm, layout, 60).executed_ratio
    assert ratio <= budget
    assert ratio == pytest.approx(budget, rel=0.05)


def test_full_budget_is_off() -> None:
    spec = ARCHITECTURES["llava-onevision-7b"]
    assert solve_budget(1.0, spec.llm, spec.layout(frames=8), 50) == AimSchedule()


def test_unreachable_budget_gives_the_cheapest() -> None:
    spec = ARCHITECTURES["llava-onevision-7b"]
    layout = spec.layout(frames=2)
    schedule = solve_budget(1e-4, spec.llm, layout, text_tokens=500)
    assert schedule.merge_ratio == pytest.approx(1 / 196)
    assert estimate_flops(schedule, spec.llm, layout, 500).executed_ratio > 1e-4


@pytest.mark.parametrize("budget", [0.0, -1.0, 1.5])
def test_invalid_budget(budget: float) -> None:
    spec = ARCHITECTURES["llava-onevision-7b"]
    with pytest.raises(ValueError, match="budget"):
        solve_budget(budget, spec.llm, spec.layout(frames=8), 50)


SIGLIP = VisionShape(hidden_size=1152, num_layers=26, intermediate_size=4304, num_heads=16, tokens=729)


@pytest.mark.parametrize("budget", [0.8, 0.5, 0.35])
def test_prefill_budget_counts_the_encoder(budget: float) -> None:
    """LLaVA-OV-0.5B with 16 frames: the encoder is most of the prefill; encoder + LLM land at the
    budget, the encoder at the largest keep within the budget's fraction of its own FLOPs."""
    spec = ARCHITECTURES["llava-onevision-0.5b"]
    layout = spec.layout(frames=16)
    cost = lambda keep: 16 * SIGLIP.pass_flops(keep)  # noqa: E731
    schedule = solve_prefill_budget(budget, spec.llm, layout, 60, cost)
    llm = estimate_flops(schedule, spec.llm, layout, 60)
    whole = (cost(schedule.encoder_keep) + llm.executed) / (cost(1.0) + llm.baseline)
    assert whole <= budget and whole == pytest.approx(budget, rel=0.05)
    assert cost(schedule.encoder_keep) <= budget * cost(1.0)
    assert all(cost(keep) > budget * cost(1.0) for keep in ENCODER_KEEPS if keep > schedule.encoder_keep)
    assert llm.executed_ratio >= budget  # the LLM gets what the encoder's grid step left over


def test_prefill_budget_below_the_encoder_floor_and_without_an_encoder_model() -> None:
    """Below what the tower's stock early layers cost, the encoder goes to its smallest keep and the
    LLM takes the rest; a prompt without encoder FLOPs is the LLM budget."""
    spec = ARCHITECTURES["llava-onevision-0.5b"]
    layout = spec.layout(frames=8)
    cost = lambda keep: 8 * SIGLIP.pass_flops(keep)  # noqa: E731
    schedule = solve_prefill_budget(0.1, spec.llm, layout, 60, cost)
    assert schedule.encoder_keep == ENCODER_KEEPS[-1] and cost(ENCODER_KEEPS[-1]) / cost(1.0) > 0.1
    no_encoder = solve_prefill_budget(0.3, spec.llm, layout, 60, lambda keep: 0.0)
    assert no_encoder == solve_budget(0.3, spec.llm, layout, 60)
    assert solve_prefill_budget(1.0, spec.llm, layout, 60, cost) == AimSchedule()


@pytest.mark.parametrize("budget", [0.5, 0.3, 0.15])
def test_merging_alone_meets_a_budget_where_the_engine_cannot_prune(budget: float) -> None:
    """`prune=False`: no pruning window, and still within the budget whenever merging can reach it
    (the schedule with pruning would exceed it once pruning is skipped)."""
    spec = ARCHITECTURES["llava-onevision-7b"]
    layout = spec.layout(frames=16)
    with_pruning = solve_budget(budget, spec.llm, layout, 60)
    assert with_pruning.prune_layers is not None
    unpruned = estimate_flops(AimSchedule(with_pruning.merge_ratio), spec.llm, layout, 60).executed_ratio
    assert unpruned > budget  # what the engine would run, pruning skipped
    merge_only = solve_budget(budget, spec.llm, layout, 60, prune=False)
    assert merge_only.prune_layers is None
    ratio = estimate_flops(merge_only, spec.llm, layout, 60).executed_ratio
    assert ratio <= budget and ratio == pytest.approx(budget, rel=0.05)
    cost = lambda keep: 16 * SIGLIP.pass_flops(keep)  # noqa: E731
    assert solve_prefill_budget(budget, spec.llm, layout, 60, cost, prune=False).prune_layers is None
