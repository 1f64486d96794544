"""The AIM knob at the gateway: 400s naming the header or the body part at fault, and precedence.

The grammar itself (forms, checks, canonical forms) is `aim_vllm.core.level`'s, tested in
tests/core/test_level.py; here: how the gateway turns it into OpenAI-shaped errors.
"""

from __future__ import annotations

import pytest

from server.errors import InvalidRequestError
from server.knob import OFF, parse_body_knob, parse_level, resolve_knob


@pytest.mark.parametrize("text", ["", "fast", "budget:1.5", "merge:0", "prune:22-14", "x" * 100, "keep:0.3"])
def test_bad_levels_are_400_naming_the_header(text: str) -> None:
    """A typo in X-AIM-Level must be a clear 400 on that header, never a silent fallback to some level."""
    with pytest.raises(InvalidRequestError) as info:
        parse_level(text)
    assert info.value.status_code == 400
    assert info.value.param == "X-AIM-Level"
    assert "expected a preset" in info.value.message


@pytest.mark.parametrize(
    ("value", "param"),
    [
        (5, "aim"),
        ([0.5], "aim"),
        ({}, "aim"),
        ({"preset": "turbo"}, "aim.preset"),
        ({"budget": True}, "aim.budget"),
        ({"budget": 0.3, "preset": "off"}, "aim.budget"),
        ({"merge_ratio": 1.5}, "aim.merge_ratio"),
        ({"merge_ratio": 0.5, "speed": 2}, "aim.speed"),
        ({"prune_layers": [9, 3]}, "aim.prune_layers"),
        ({"prune_layers": [-1, 2]}, "aim.prune_layers[0]"),
        ("turbo", "aim"),
    ],
)
def test_bad_body_knobs_are_400_with_param(value: object, param: str) -> None:
    """Clients need to know which part of `aim` is wrong; mixing forms or unknown keys is refused."""
    with pytest.raises(InvalidRequestError) as info:
        parse_body_knob(value)
    assert info.value.status_code == 400
    assert info.value.param == param


def test_body_wins_over_header_and_header_over_default() -> None:
    """Precedence is part of the contract: an explicit body knob must not lose to a proxy's header."""
    default = parse_level("light")
    assert resolve_knob("max", "budget:0.2", default).text == "max"
    assert resolve_knob({"budget": 0.3}, "max", default).text == "budget:0.3"
    assert resolve_knob(None, "budget:0.2", default).text == "budget:0.2"
    assert resolve_knob(None, None, default) is default
    assert resolve_knob(None, None, OFF).engine_kwargs() == {"aim_preset": "off"}
    assert parse_body_knob(None) is None
