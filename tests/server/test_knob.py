"""The AIM knob: level grammar, body forms, precedence and the engine contract (`mm_processor_kwargs`)."""

from __future__ import annotations

import pytest

from aim_vllm.core.schedule import PRESETS
from server.errors import InvalidRequestError
from server.knob import OFF, BudgetKnob, ExplicitKnob, PresetKnob, parse_body_knob, parse_level, resolve_knob


@pytest.mark.parametrize(
    ("text", "level", "kwargs"),
    [
        ("balanced", "balanced", {"aim_preset": "balanced"}),
        ("  MAX ", "max", {"aim_preset": "max"}),
        ("off", "off", {"aim_preset": "off"}),
        ("budget:0.2", "budget:0.2", {"aim_budget": 0.2}),
        ("budget:1", "budget:1", {"aim_budget": 1.0}),
        ("merge:0.25", "merge:0.25", {"aim_merge_ratio": 0.25}),
        (
            "merge:0.25,prune:14-22",
            "merge:0.25,prune:14-22",
            {"aim_merge_ratio": 0.25, "aim_prune_l1": 14, "aim_prune_l2": 22},
        ),
        (
            "prune:14-22, merge:.5",
            "merge:0.5,prune:14-22",
            {"aim_merge_ratio": 0.5, "aim_prune_l1": 14, "aim_prune_l2": 22},
        ),
        ("prune:0-1", "merge:1,prune:0-1", {"aim_merge_ratio": 1.0, "aim_prune_l1": 0, "aim_prune_l2": 1}),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
def test_level_grammar_maps_onto_the_engine_contract(text: str, level: str, kwargs: dict) -> None:
    """Each grammar form becomes exactly the mm_processor_kwargs the engine reads, and a stable level."""
    knob = parse_level(text)
    assert knob.level == level
    assert knob.mm_processor_kwargs() == kwargs
    assert parse_level(knob.level) == knob  # the normalised level parses back to the same knob


@pytest.mark.parametrize(
    "text",
    [
        "",
        "fast",
        "budget:0",
        "budget:1.5",
        "budget:nan",
        "budget:1e-3",
        "budget:-0.1",
        "merge:0",
        "merge:0.5,merge:0.4",
        "prune:22-14",
        "prune:14-14",
        "prune:14",
        "prune:1-99999",
        "merge:٠.٥",
        "merge:0.5;prune:1-2",
        "x" * 100,
    ],
)
def test_bad_levels_are_400_naming_the_header(text: str) -> None:
    """A typo in X-AIM-Level must be a clear 400 on that header, never a silent fallback to some level."""
    with pytest.raises(InvalidRequestError) as info:
        parse_level(text)
    assert info.value.status_code == 400
    assert info.value.param == "X-AIM-Level"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("light", PresetKnob(preset="light")),
        ("budget:0.5", BudgetKnob(budget=0.5)),
        ({"preset": "Balanced"}, PresetKnob(preset="balanced")),
        (
            {"merge_ratio": 0.25, "prune_layers": [14, 22]},
            ExplicitKnob(merge_ratio=0.25, prune_layers=[14, 22]),
        ),
        ({"merge_ratio": 1}, ExplicitKnob(merge_ratio=1.0)),
        ({"prune_layers": [3, 9]}, ExplicitKnob(prune_layers=[3, 9])),
        ({"budget": 0.3}, BudgetKnob(budget=0.3)),
        (None, None),
    ],
)
def test_body_forms(value: object, expected: object) -> None:
    """The SDK's extra_body={"aim": ...} accepts a string or any of the three object forms."""
    assert parse_body_knob(value) == expected


@pytest.mark.parametrize(
    ("value", "param"),
    [
        (5, "aim"),
        ([0.5], "aim"),
        ({}, "aim"),
        ({"preset": "turbo"}, "aim.preset"),
        ({"budget": True}, "aim.budget"),
        ({"budget": "0.5"}, "aim.budget"),
        ({"budget": 0.3, "preset": "off"}, "aim.budget"),
        ({"merge_ratio": 1.5}, "aim.merge_ratio"),
        ({"merge_ratio": 0.5, "speed": 2}, "aim.speed"),
        ({"prune_layers": [9, 3]}, "aim"),
        ({"prune_layers": [1, 2, 3]}, "aim.prune_layers"),
        ({"prune_layers": [-1, 2]}, "aim.prune_layers[0]"),
        ("turbo", "aim"),
    ],
)
def test_bad_body_knobs_are_400_with_param(value: object, param: str) -> None:
    """Clients need to know which part of `aim` is wrong; mixing forms or unknown keys is refused."""
    with pytest.raises(InvalidRequestError) as info:
        parse_body_knob(value)
    assert info.value.param == param


def test_body_wins_over_header_and_header_over_default() -> None:
    """Precedence is part of the contract: an explicit body knob must not lose to a proxy's header."""
    default = parse_level("light")
    assert resolve_knob("max", "budget:0.2", default).level == "max"
    assert resolve_knob(None, "budget:0.2", default).level == "budget:0.2"
    assert resolve_knob(None, None, default) is default
    assert resolve_knob(None, None, OFF).mm_processor_kwargs() == {"aim_preset": "off"}


def test_presets_match_the_core_schedule() -> None:
    """The gateway accepts exactly the presets the engine resolves (one source: core.schedule.PRESETS)."""
    for name in PRESETS:
        assert parse_level(name).mm_processor_kwargs() == {"aim_preset": name}
    assert {knob.label for knob in (parse_level("budget:0.1"), parse_level("merge:0.5"))} == {
        "budget",
        "custom",
    }


@pytest.mark.parametrize(
    ("text", "kwargs"),
    [
        ("merge:0.25,method:pool", {"aim_merge_ratio": 0.25, "aim_merge_method": "pool"}),
        (
            "prune:2-3,keep:0.3,importance:fastv",
            {
                "aim_merge_ratio": 1.0,
                "aim_prune_l1": 2,
                "aim_prune_l2": 3,
                "aim_prune_method": "fastv",
                "aim_prune_keep": 0.3,
            },
        ),
    ],
)
def test_baseline_levels_map_to_engine_keys(text: str, kwargs: dict) -> None:
    """Baselines travel like AIM levels; the level string round-trips through the grammar."""
    knob = parse_level(text)
    assert knob.mm_processor_kwargs() == kwargs
    assert parse_level(knob.level) == knob


@pytest.mark.parametrize("text", ["merge:0.5,method:median", "keep:0.3", "merge:0.5,importance:random"])
def test_bad_baseline_levels_are_400(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_level(text)
