"""Pruning decisions per request: when pruning runs, when it steps aside, and its exact counts."""

import pytest

from aim_vllm.core.schedule import AimSchedule
from aim_vllm.pruning.state import (
    NOT_PRUNED,
    PRUNED,
    SKIPPED_PROMPT_LOGPROBS,
    SKIPPED_SPLIT,
    PruneRecord,
    RequestStep,
    decide,
)

LAYERS = 6
PRUNE_1_4 = AimSchedule(1.0, (1, 4))


def _req(schedule=PRUNE_1_4, skip="") -> RequestStep:
    # 10 text tokens before, 40 visual, 5 after
    return RequestStep(
        "r",
        num_prompt=55,
        schedule=schedule,
        visual_spans=((10, 40),),
        visual_tokens_in=160,
        skip_reason=skip,
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


def test_no_pruning_requested() -> None:
    for req in (_req(schedule=None), _req(schedule=AimSchedule(0.5))):
        assert decide(req, 0, 55, "", LAYERS).status == NOT_PRUNED


def test_visual_positions() -> None:
    req = _req()
    assert [req.is_visual(p) for p in (9, 10, 49, 50)] == [False, True, True, False]
    assert PruneRecord.planned(req, LAYERS).num_visual == 40
