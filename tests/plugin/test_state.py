"""Pruning decisions per request: when pruning runs, when it steps aside, and its exact counts."""

import pytest

from aim_vllm.core.schedule import AimSchedule
from aim_vllm.pruning.state import (
    NOT_PRUNED,
    PRUNED,
    SKIPPED_PROMPT_LOGPROBS,
    SKIPPED_SPLIT,
    SKIPPED_TRAILING_VISUAL,
    WHOLE,
    PruneRecord,
    RequestStep,
    decide,
    scheduler_verdict,
)

LAYERS = 6
PRUNE_1_4 = AimSchedule(1.0, (1, 4))


def _req(schedule=PRUNE_1_4, skip="", verdict=None, num_prompt=55) -> RequestStep:
    # 10 text tokens before, 40 visual, 5 after
    return RequestStep(
        "r",
        num_prompt=num_prompt,
        schedule=schedule,
        visual_spans=((10, 40),),
        visual_tokens_in=160,
        skip_reason=skip,
        verdict=verdict,
    )


def test_whole_prompt_prefill_prunes_with_planned_counts() -> None:
    record = decide(_req(), computed=0, scheduled=55, disabled_reason="", num_layers=LAYERS)
    assert record.status == PRUNED
    assert record.kept_after_layer == [40, 26, 13, 0, 0, 0]
    assert record.rows_per_layer == [55, 55, 41, 28, 15, 15]
    assert record.missing == [0, 0, 14, 27, 40, 40]


@pytest.mark.parametrize(
    ("computed", "scheduled", "reason", "skip", "status"),
    [
        (0, 30, "", "", SKIPPED_SPLIT),  # chunked prefill split the prompt
        (16, 39, "", "", SKIPPED_SPLIT),  # prefix cache hit
        (0, 55, "prefix caching is enabled", "", "skipped: prefix caching is enabled"),
        (0, 55, "", SKIPPED_PROMPT_LOGPROBS, SKIPPED_PROMPT_LOGPROBS),
    ],
)
def test_fallbacks_are_reported_and_unpruned(computed, scheduled, reason, skip, status) -> None:
    """Whenever pruning cannot be exact, the request runs unpruned and says why."""
    record = decide(_req(skip=skip), computed, scheduled, reason, LAYERS)
    assert record.status == status
    assert record.missing == [0] * LAYERS
    assert record.rows_per_layer == [55] * LAYERS


def test_the_schedulers_verdict_decides() -> None:
    """WHOLE prunes as planned; a verdict that says why not is the reported reason; a split or a
    cache hit of a WHOLE request (never scheduled so) still runs unpruned on both sides alike."""
    assert decide(_req(verdict=WHOLE), 0, 55, "", LAYERS).status == PRUNED
    why = "skipped: its prompt with max_tokens exceeds"
    record = decide(_req(verdict=why), 0, 55, "", LAYERS)
    assert record.status == why and record.missing == [0] * LAYERS
    assert decide(_req(verdict=WHOLE), 0, 30, "", LAYERS).status == SKIPPED_SPLIT


def test_scheduler_verdict() -> None:
    assert scheduler_verdict(_req(), longest=100, step_budget=100) == WHOLE
    assert scheduler_verdict(_req(), longest=101, step_budget=100).startswith(
        "skipped: its prompt with max_tokens (101 tokens) exceeds what one step may prefill (100"
    )
    for unpruned in (
        _req(schedule=AimSchedule(0.5)),
        _req(skip=SKIPPED_PROMPT_LOGPROBS),
        _req(num_prompt=50),
    ):
        assert scheduler_verdict(unpruned, 100, 100) is None


def test_a_prompt_ending_in_visual_rows_is_not_pruned() -> None:
    """Its last row would be pruned and its first token sampled from a zero row: reported instead."""
    record = decide(_req(num_prompt=50), 0, 50, "", LAYERS)
    assert record.status == SKIPPED_TRAILING_VISUAL
    assert record.rows_per_layer == [50] * LAYERS


def test_no_pruning_requested() -> None:
    for req in (_req(schedule=None), _req(schedule=AimSchedule(0.5))):
        assert decide(req, 0, 55, "", LAYERS).status == NOT_PRUNED


def test_visual_positions() -> None:
    req = _req()
    assert [req.is_visual(p) for p in (9, 10, 49, 50)] == [False, True, True, False]
    assert PruneRecord.planned(req, LAYERS).num_visual == 40
