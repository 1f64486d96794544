"""What `aim-vllm bench` sends: media kinds, levels, request bodies and the interleaved phase order."""

from __future__ import annotations

import base64
from collections import Counter

import pytest

from bench.workload import (
    Level,
    MediaSpec,
    chat_body,
    level_order,
    media_part,
    parse_media,
    plan_phases,
    resolve_levels,
)


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("image", MediaSpec("image")),
        ("video8", MediaSpec("video", 8)),
        (" Video:16 ", MediaSpec("video", 16)),
    ],
)
def test_parse_media(text: str, spec: MediaSpec) -> None:
    """Both spellings of a video work; names are what reports show."""
    assert parse_media(text) == spec
    assert parse_media(spec.name) == spec


@pytest.mark.parametrize("text", ["audio", "video", "video0", "image2", ""])
def test_parse_media_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="media must be"):
        parse_media(text)


def test_resolve_levels_expands_shorthands_and_puts_off_first() -> None:
    """`merge`/`prune` are the halves of balanced as the engine resolved them; off is the reference."""
    levels = resolve_levels(["balanced", "merge", "prune", "budget:0.2", "balanced"], 0.25, [12, 19])
    assert [level.label for level in levels] == ["off", "balanced", "merge", "prune", "budget:0.2"]
    assert {level.label: level.aim for level in levels} == {
        "off": "off", "balanced": "balanced", "merge": "merge:0.25", "prune": "merge:1,prune:12-19",
        "budget:0.2": "budget:0.2",
    }  # fmt: skip


def test_resolve_levels_needs_a_window_for_prune() -> None:
    with pytest.raises(ValueError, match="pruning window"):
        resolve_levels(["prune"], 0.25, None)


def test_level_order_is_abba_over_round_pairs() -> None:
    """In each pair of rounds every level's positions sum to n - 1 (linear drift cancels); leaders vary."""
    levels = [Level(name) for name in "abcd"]
    orders = ["".join(level.label for level in level_order(levels, rnd)) for rnd in range(4)]
    assert orders == ["abcd", "dcba", "bcda", "adcb"]
    for pair in (orders[0:2], orders[2:4]):
        assert {name: sum(order.index(name) for order in pair) for name in "abcd"} == dict.fromkeys("abcd", 3)
    assert orders[0][0] != orders[2][0]


def test_plan_phases_counts_and_order() -> None:
    """Split pairs (concurrency 1) then load phases per media; waves x concurrency requests each."""
    levels = [Level("off"), Level("balanced")]
    media = [MediaSpec("image"), MediaSpec("video", 8)]
    phases = plan_phases(media, [1, 4], levels, rounds=2, waves=3, split_pairs=2)
    assert len(phases) == 2 * 2 * (2 + 2 * 2)
    first_round = phases[: len(phases) // 2]
    assert [(p.media.name, p.split, p.concurrency) for p in first_round[:6]] == [
        ("image", True, 1), ("image", True, 1), ("image", False, 1), ("image", False, 1),
        ("image", False, 4), ("image", False, 4),
    ]  # fmt: skip
    assert {p.requests for p in phases if not p.split and p.concurrency == 4} == {12}
    assert {p.requests for p in phases if p.split} == {2}
    cells = Counter(p.cell for p in phases if not p.split)
    assert set(cells.values()) == {2}  # every cell once per round


def test_plan_phases_without_split() -> None:
    phases = plan_phases([MediaSpec("image")], [1], [Level("off")], rounds=1, waves=1, split_pairs=0)
    assert [p.split for p in phases] == [False]


def test_media_parts_are_fresh_and_decodable() -> None:
    """Different seeds give different media (vLLM must not reuse encoder outputs); videos carry F frames."""
    image_a = media_part(MediaSpec("image"), 1, 32, 32)
    image_b = media_part(MediaSpec("image"), 2, 32, 32)
    assert image_a["type"] == "image_url" and image_a != image_b
    assert image_a["image_url"]["url"].startswith("data:image/png;base64,")
    video = media_part(MediaSpec("video", 3), 1, 32, 32)["video_url"]["url"]
    frames = video.removeprefix("data:video/jpeg;base64,").split(",")
    assert len(frames) == 3 and all(base64.b64decode(f)[:2] == b"\xff\xd8" for f in frames)


def test_chat_body_gateway_and_direct() -> None:
    """Streaming with usage and token ids; `aim` for the gateway, mm_processor_kwargs for an engine."""
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    body = chat_body("m", part, "image", 7, aim="balanced")
    assert body["stream"] and body["stream_options"] == {"include_usage": True} and body["return_token_ids"]
    assert body["max_tokens"] == 7 and body["ignore_eos"] and body["aim"] == "balanced"
    assert "mm_processor_kwargs" not in body
    assert body["messages"][0]["content"][0] == part
    direct = chat_body("m", part, "video", 7, mm_processor_kwargs={"aim_preset": "off"})
    assert "aim" not in direct and direct["mm_processor_kwargs"] == {"aim_preset": "off"}
