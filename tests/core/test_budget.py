"""The FLOPs-budget solver lands within 5% of the asked budget."""

import pytest

from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.budget import estimate_flops, solve_budget
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
