"""The one level grammar: its text, JSON and engine forms, their checks, and the canonical forms."""

from __future__ import annotations

import pytest

from aim_vllm.core.level import (
    OFF,
    AimLevel,
    LevelError,
    parse_engine_kwargs,
    parse_json,
    parse_text,
    schedule_kwargs,
    without_engine_keys,
)
from aim_vllm.core.schedule import PRESETS, AimSchedule, preset_schedule

PRUNE = AimSchedule(1.0, (2, 5))
BASELINE = AimSchedule(1.0, (2, 3), prune_method="fastv", prune_keep=0.3)


@pytest.mark.parametrize(
    ("text", "canonical", "engine"),
    [
        ("balanced", "balanced", {"aim_preset": "balanced"}),
        ("  MAX ", "max", {"aim_preset": "max"}),
        ("budget:0.2", "budget:0.2", {"aim_budget": 0.2}),
        ("budget:1", "budget:1", {"aim_budget": 1.0}),
        ("merge:0.25", "merge:0.25", {"aim_merge_ratio": 0.25}),
        (
            "prune:14-22, merge:.5",
            "merge:0.5,prune:14-22",
            {"aim_merge_ratio": 0.5, "aim_prune_l1": 14, "aim_prune_l2": 22},
        ),
        ("prune:0-1", "merge:1,prune:0-1", {"aim_merge_ratio": 1.0, "aim_prune_l1": 0, "aim_prune_l2": 1}),
        (
            "merge:0.25,method:pool",
            "merge:0.25,method:pool",
            {"aim_merge_ratio": 0.25, "aim_merge_method": "pool"},
        ),
        (
            "prune:2-3,keep:0.3,importance:fastv",
            "merge:1,prune:2-3,importance:fastv,keep:0.3",
            {
                "aim_merge_ratio": 1.0,
                "aim_prune_l1": 2,
                "aim_prune_l2": 3,
                "aim_prune_method": "fastv",
                "aim_prune_keep": 0.3,
            },
        ),
        (
            "merge:0.25,prune:14-22,encoder:0.5",
            "merge:0.25,prune:14-22,encoder:0.5",
            {"aim_merge_ratio": 0.25, "aim_prune_l1": 14, "aim_prune_l2": 22, "aim_encoder_keep": 0.5},
        ),
        ("encoder:.25", "merge:1,encoder:0.25", {"aim_merge_ratio": 1.0, "aim_encoder_keep": 0.25}),
        (
            "Balanced, encoder:0.5",
            "balanced,encoder:0.5",
            {"aim_preset": "balanced", "aim_encoder_keep": 0.5},
        ),
        ("budget:0.2,encoder:.25", "budget:0.2,encoder:0.25", {"aim_budget": 0.2, "aim_encoder_keep": 0.25}),
        (
            "Budget:0.3, encoder:AUTO",
            "budget:0.3,encoder:auto",
            {"aim_budget": 0.3, "aim_encoder_keep": "auto"},
        ),
    ],
)
def test_text_form_round_trips_through_every_form(text: str, canonical: str, engine: dict) -> None:
    """Text -> canonical text and engine form; both parse back to the same level."""
    level = parse_text(text)
    assert level.text == canonical and level.engine_kwargs() == engine
    assert parse_text(level.text) == level == parse_engine_kwargs(level.engine_kwargs())


@pytest.mark.parametrize(
    "text",
    ["", "fast", "budget:0", "budget:1.5", "budget:nan", "budget:1e-3", "budget:-0.1", "merge:0",
     "merge:0.5,merge:0.4", "prune:22-14", "prune:14-14", "prune:14", "prune:1-99999", "merge:٠.٥",
     "merge:0.5;prune:1-2", "x" * 100, "keep:0.3", "merge:0.5,method:median", "merge:0.5,importance:random",
     "prune:1-2000", "encoder:0", "encoder:1.5", "encoder:half", "merge:0.5,encoder:0.5,encoder:0.4",
     "balanced,merge:0.5", "budget:0.2,encoder:0", "max,encoder:0.5,encoder:0.4", "balanced,",
     "balanced,encoder:auto", "merge:0.5,encoder:auto", "encoder:auto", "budget:0.3,encoder:autox"],
)  # fmt: skip
def test_bad_text_is_a_level_error(text: str) -> None:
    with pytest.raises(LevelError):
        parse_text(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("light", AimLevel(preset="light")),
        ({"preset": "Balanced"}, AimLevel(preset="balanced")),
        ({"merge_ratio": 0.25, "prune_layers": [14, 22]}, AimLevel(schedule=AimSchedule(0.25, (14, 22)))),
        ({"merge_ratio": 1}, AimLevel(schedule=AimSchedule())),
        ({"prune_layers": [2, 5]}, AimLevel(schedule=PRUNE)),
        ({"budget": 0.3}, AimLevel(budget=0.3)),
        ({"prune_layers": [2, 3], "prune_method": "fastv", "prune_keep": 0.3}, AimLevel(schedule=BASELINE)),
        ({"encoder_keep": 0.5}, AimLevel(schedule=AimSchedule(encoder_keep=0.5))),
        ({"preset": "max", "encoder_keep": 0.5}, AimLevel(preset="max", encoder_keep=0.5)),
    ],
)
def test_json_form(value: object, expected: AimLevel) -> None:
    assert parse_json(value) == expected


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (5, None),
        ({}, None),
        ({"preset": "turbo"}, "preset"),
        ({"budget": True}, "budget"),
        ({"budget": "0.5"}, "budget"),
        ({"budget": 0.3, "preset": "off"}, "budget"),
        ({"merge_ratio": 1.5}, "merge_ratio"),
        ({"merge_ratio": 0.5, "speed": 2}, "speed"),
        ({"prune_layers": [9, 3]}, "prune_layers"),
        ({"prune_layers": [1, 2, 3]}, "prune_layers"),
        ({"prune_layers": [-1, 2]}, "prune_layers[0]"),
        ({"merge_ratio": 0.5, "merge_method": "median"}, "merge_method"),
        ({"prune_keep": 0.3}, None),
        ({"encoder_keep": 0}, "encoder_keep"),
        ({"encoder_keep": "0.5"}, "encoder_keep"),
        ({"budget": 0.2, "encoder_keep": 2}, "encoder_keep"),
        ({"preset": "max", "encoder_keep": "auto"}, "encoder_keep"),
        ({"merge_ratio": 0.5, "encoder_keep": "auto"}, "encoder_keep"),
        ({"preset": "max", "merge_ratio": 0.5}, "merge_ratio"),
    ],
)
def test_bad_json_names_the_field(value: object, field: str | None) -> None:
    with pytest.raises(LevelError) as info:
        parse_json(value)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, None),
        ({"num_frames": 8}, None),
        ({"aim_preset": "max"}, AimLevel(preset="max")),
        ({"aim_budget": 0.2}, AimLevel(budget=0.2)),
        ({"aim_merge_ratio": 0.25}, AimLevel(schedule=AimSchedule(0.25))),
        ({"aim_prune_l1": 2, "aim_prune_l2": 5}, AimLevel(schedule=PRUNE)),
        (
            {"aim_prune_l1": 2, "aim_prune_method": "fastv", "aim_prune_keep": 0.3},
            AimLevel(schedule=BASELINE),
        ),
        ({"aim_encoder_keep": 0.5}, AimLevel(schedule=AimSchedule(encoder_keep=0.5))),
        ({"aim_budget": 0.2, "aim_encoder_keep": 0.5}, AimLevel(budget=0.2, encoder_keep=0.5)),
        ({"aim_budget": 0.2, "aim_encoder_keep": "auto"}, AimLevel(budget=0.2, encoder_keep="auto")),
    ],
)
def test_engine_form(kwargs: dict, expected: AimLevel | None) -> None:
    assert parse_engine_kwargs(kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aim_preset": "fast"}, "aim_preset must be one of"),
        ({"aim_preset": 3}, "aim_preset must be one of"),
        ({"aim_preset": "max", "aim_budget": 0.3}, "give one of"),
        ({"aim_merge_ratio": 0.5, "aim_budget": 0.3}, "give one of"),
        ({"aim_budget": 0}, "aim_budget must be in"),
        ({"aim_budget": "0.3"}, "must be a number"),
        ({"aim_merge_ratio": True}, "must be a number"),
        ({"aim_merge_ratio": 1.2}, "merge_ratio must be in"),
        ({"aim_prune_l1": 3}, "give both"),
        ({"aim_prune_l2": 3, "aim_prune_keep": 0.3}, "needs aim_prune_l1"),
        ({"aim_prune_l1": 3.0, "aim_prune_l2": 5}, "must be an integer"),
        ({"aim_prune_l1": 5, "aim_prune_l2": 5}, "0 <= l1 < l2"),
        ({"aim_merge_ratio": 0.5, "aim_merge_method": 3}, "merge_method must be one of"),
    ],
)
def test_bad_engine_form_names_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(LevelError, match=message):
        parse_engine_kwargs(kwargs)


def test_resolution_against_a_model() -> None:
    """Presets follow the model's depth; budgets go to the solver; explicit windows must fit."""

    def never(budget: float, whole_prefill: bool) -> AimSchedule:
        raise AssertionError("no budget here")

    assert AimLevel(preset="balanced").resolve(28, never) == preset_schedule("balanced", 28)
    assert AimLevel(budget=0.5).resolve(28, lambda b, whole: AimSchedule(b)) == AimSchedule(0.5)
    with pytest.raises(LevelError, match="l2 <= 6"):
        AimLevel(schedule=AimSchedule(1.0, (2, 9))).resolve(6, never)


def test_resolved_schedules_are_empty_when_off() -> None:
    """AIM off leaves vLLM's kwargs (and so its cache keys) as without the plugin; an explicit
    off *level* still says so, so the engine does not apply its own default instead."""
    assert schedule_kwargs(AimSchedule()) == {}
    assert AimLevel(schedule=AimSchedule()).engine_kwargs() == {"aim_merge_ratio": 1.0}
    assert OFF.engine_kwargs() == {"aim_preset": "off"}
    assert without_engine_keys({"aim_budget": 0.1, "aim_preset": "x", "num_frames": 4}) == {"num_frames": 4}


def test_presets_and_labels() -> None:
    """Every core preset is a level; labels are bounded for metrics."""
    assert [parse_text(name).engine_kwargs() for name in PRESETS] == [{"aim_preset": n} for n in PRESETS]
    assert [parse_text(t).label for t in ("max", "budget:0.1", "merge:0.5")] == ["max", "budget", "custom"]


def test_preset_and_budget_resolve_with_their_encoder_keep() -> None:
    """A preset or budget resolves as without `encoder`, then carries the encoder keep fraction."""
    level = parse_text("balanced,encoder:0.5")
    llm_only = lambda b, whole: AimSchedule(b, encoder_keep=0.9 if whole else 1.0)  # noqa: E731
    assert level.resolve(28, llm_only) == AimSchedule(0.25, (14, 22), encoder_keep=0.5)
    assert parse_text("budget:0.3,encoder:0.25").resolve(28, llm_only) == AimSchedule(0.3, encoder_keep=0.25)
    # encoder:auto: the budget covers the whole prefill and the solver's encoder keep stands
    assert parse_text("budget:0.3,encoder:auto").resolve(28, llm_only) == AimSchedule(0.3, encoder_keep=0.9)
    with pytest.raises(LevelError, match="explicit level carries"):
        AimLevel(schedule=AimSchedule(0.5), encoder_keep=0.5)
