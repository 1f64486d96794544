"""The per-request AIM level in mm_processor_kwargs: validation, resolution, canonical form."""

import json

import pytest

from aim_vllm.config import (
    DEFAULT_ENV,
    AimRequest,
    canonical_kwargs,
    default_request,
    parse_request,
    without_aim_keys,
)
from aim_vllm.core.schedule import AimSchedule, preset_schedule


def _never(budget: float) -> AimSchedule:
    raise AssertionError("budget solver must not be called")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, None),
        ({"num_frames": 8}, None),
        ({"aim_preset": "max"}, AimRequest(preset="max")),
        ({"aim_budget": 0.2}, AimRequest(budget=0.2)),
        ({"aim_merge_ratio": 0.25}, AimRequest(schedule=AimSchedule(0.25))),
        ({"aim_prune_l1": 2, "aim_prune_l2": 5}, AimRequest(schedule=AimSchedule(1.0, (2, 5)))),
        (
            {"aim_merge_ratio": 1, "aim_prune_l1": 0, "aim_prune_l2": 1},
            AimRequest(schedule=AimSchedule(1.0, (0, 1))),
        ),
    ],
)
def test_parse_valid(kwargs, expected) -> None:
    assert parse_request(kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aim_preset": "fast"}, "aim_preset must be one of"),
        ({"aim_preset": "max", "aim_budget": 0.3}, "give one of"),
        ({"aim_merge_ratio": 0.5, "aim_budget": 0.3}, "give one of"),
        ({"aim_budget": 0}, "aim_budget must be in"),
        ({"aim_budget": "0.3"}, "must be a number"),
        ({"aim_merge_ratio": True}, "must be a number"),
        ({"aim_merge_ratio": 1.2}, "merge_ratio must be in"),
        ({"aim_prune_l1": 3}, "both"),
        ({"aim_prune_l1": 3.0, "aim_prune_l2": 5}, "must be an integer"),
        ({"aim_prune_l1": 5, "aim_prune_l2": 5}, "0 <= l1 < l2"),
    ],
)
def test_parse_invalid_names_the_problem(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_request(kwargs)


def test_resolution_against_a_model() -> None:
    """Presets follow the model's depth; explicit windows are checked against it."""
    assert AimRequest(preset="balanced").resolve(28, _never) == preset_schedule("balanced", 28)
    assert AimRequest(budget=0.5).resolve(28, lambda b: AimSchedule(b)) == AimSchedule(0.5)
    with pytest.raises(ValueError, match="l2 <= 6"):
        AimRequest(schedule=AimSchedule(1.0, (2, 9))).resolve(6, _never)


def test_canonical_form_is_empty_when_off() -> None:
    """AIM off leaves vLLM's kwargs (and so its cache keys) exactly as without the plugin."""
    assert canonical_kwargs(AimSchedule()) == {}
    assert canonical_kwargs(AimSchedule(0.25, (14, 22))) == {
        "aim_merge_ratio": 0.25,
        "aim_prune_l1": 14,
        "aim_prune_l2": 22,
    }
    assert parse_request(canonical_kwargs(AimSchedule(0.5, (1, 3)))) == AimRequest(
        schedule=AimSchedule(0.5, (1, 3))
    )


def test_hf_processor_never_sees_aim_keys() -> None:
    assert without_aim_keys({"aim_budget": 0.1, "aim_preset": "x", "num_frames": 4}) == {"num_frames": 4}


def test_server_default_from_environment(monkeypatch) -> None:
    monkeypatch.delenv(DEFAULT_ENV, raising=False)
    assert default_request() is None
    monkeypatch.setenv(DEFAULT_ENV, json.dumps({"aim_preset": "light"}))
    assert default_request() == AimRequest(preset="light")
    monkeypatch.setenv(DEFAULT_ENV, "balanced")
    with pytest.raises(ValueError, match="JSON object"):
        default_request()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"aim_merge_ratio": 0.25, "aim_merge_method": "pool"},
            AimSchedule(0.25, merge_method="pool"),
        ),
        (
            {"aim_prune_l1": 2, "aim_prune_method": "fastv", "aim_prune_keep": 0.3},
            AimSchedule(1.0, (2, 3), prune_method="fastv", prune_keep=0.3),
        ),
    ],
)
def test_baselines_parse_and_round_trip(kwargs, expected) -> None:
    """Baseline requests are explicit schedules; their canonical form parses back to them."""
    request = parse_request(kwargs)
    assert request == AimRequest(schedule=expected)
    assert parse_request(canonical_kwargs(expected)) == request


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aim_merge_ratio": 0.5, "aim_merge_method": "median"}, "merge_method must be one of"),
        ({"aim_merge_method": 3}, "must be a string"),
        ({"aim_prune_keep": 0.3}, "give both"),
        ({"aim_prune_l2": 3, "aim_prune_keep": 0.3}, "give both"),
        ({"aim_preset": "max", "aim_merge_method": "pool"}, "give one of"),
    ],
)
def test_bad_baselines(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_request(kwargs)
