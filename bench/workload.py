"""What the benchmark sends: media kinds, AIM levels, request bodies, and the order of phases.

A *cell* is (media kind, concurrency, AIM level). A *phase* runs one cell once: `waves x
concurrency` streaming requests with at most `concurrency` in flight, every request with media
never sent before (vLLM reuses encoder outputs of identical media, which would hide the vision
encoder). The levels of a round run one after another for each (media, concurrency), in ABBA
order over pairs of rounds (`level_order`), so slow drift of a shared machine hits every level
alike.

A *split* phase measures where the time goes at concurrency 1: a fresh request, then the very
same request again; the repeat reuses the encoder output (the merged embedding for merging
levels), so its TTFT is the LLM part alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aim_vllm.core.level import AimLevel, parse_text
from aim_vllm.core.schedule import AimSchedule
from aim_vllm.media import (
    image_part,
    jpeg_video_data_url,
    png_data_url,
    random_image,
    random_video,
    video_part,
)

REFERENCE_LEVEL = "off"
# Shorthands for the two halves of the balanced preset; the engine's answer to a balanced
# warm-up request gives the model's own values (`usage.aim.merge_ratio`, `prune_layers`).
MERGE_ONLY, PRUNE_ONLY = "merge", "prune"
DEFAULT_LEVELS = ("off", MERGE_ONLY, PRUNE_ONLY, "balanced", "max", "budget:0.3", "budget:0.15")
# vLLM 0.32's video pruning methods (`MultiModalConfig.video_pruning_method`): the stock engines an
# EVS-mode run can compare AIM with, one engine turn each.
STOCK_METHODS = ("evs", "vidcom2")
# The AIM engine's levels of an EVS-mode run besides `off` (`bench.runner._measure_evs`); the
# `+encoder` ones need an encoder keep.
EVS_AIM_LEVELS = (
    "aim-merge", "aim-tokens", "aim-flops", "aim-merge+encoder", "aim-tokens+encoder",
)  # fmt: skip
PROMPTS = {"image": "Describe this image in detail.", "video": "Describe what happens in this video."}
_MEDIA = re.compile(r"(image)|video:?([0-9]+)")


@dataclass(frozen=True)
class MediaSpec:
    """One kind of visual input: an image, or a video of `frames` frames."""

    kind: str  # "image" | "video"
    frames: int = 0

    @property
    def name(self) -> str:
        return "image" if self.kind == "image" else f"video{self.frames}"


def parse_media(text: str) -> MediaSpec:
    """`image`, `video8` or `video:8` -> MediaSpec (ValueError otherwise)."""
    match = _MEDIA.fullmatch(text.strip().lower())
    if match is None or (match[2] is not None and int(match[2]) < 1):
        raise ValueError(f"media must be 'image' or 'video<frames>' (e.g. video8), got {text!r}")
    return MediaSpec("image") if match[1] else MediaSpec("video", int(match[2]))


@dataclass(frozen=True)
class Level:
    """A configuration to measure: its label in reports and what its requests carry.

    Attributes:
        label: the name in reports (`off`, `merge`, `budget:0.3`, `plain`, ...).
        aim: the gateway's body field `aim` (level grammar), or None to send none.
        engine_kwargs: `mm_processor_kwargs` for requests sent to an engine directly, or None.
    """

    label: str
    aim: str | None = None
    engine_kwargs: dict[str, Any] | None = None


def check_levels(specs: list[str]) -> None:
    """LevelError for a spec that is neither a shorthand nor a level (before any engine starts)."""
    for spec in specs:
        if spec not in (MERGE_ONLY, PRUNE_ONLY):
            parse_text(spec)


def resolve_levels(specs: list[str], merge_ratio: float, prune_layers: list[int] | None) -> list[Level]:
    """Levels of `specs` (the reference level first, added when missing).

    `merge` and `prune` become the balanced preset's merge ratio and pruning window, as the
    engine resolved them for the model; every other spec is passed on in the level grammar.
    """
    labels = [REFERENCE_LEVEL, *(s for s in specs if s != REFERENCE_LEVEL)]
    levels = []
    for label in dict.fromkeys(labels):
        if label == MERGE_ONLY:
            levels.append(Level(label, AimLevel(schedule=AimSchedule(merge_ratio)).text))
        elif label == PRUNE_ONLY:
            if prune_layers is None:
                raise ValueError("the engine reported no pruning window for 'balanced'; cannot run 'prune'")
            levels.append(Level(label, AimLevel(schedule=AimSchedule(1.0, tuple(prune_layers))).text))
        else:
            levels.append(Level(label, label))
    return levels


@dataclass(frozen=True)
class Phase:
    """One cell measured once: `requests` requests, at most `concurrency` in flight."""

    round: int
    media: MediaSpec
    concurrency: int
    level: Level
    requests: int
    split: bool = False  # fresh + repeat pairs at concurrency 1 (LLM part vs end to end)

    @property
    def cell(self) -> tuple[str, int, str]:
        return (self.media.name, self.concurrency, self.level.label)


def level_order(levels: list[Level], round_index: int) -> list[Level]:
    """Round pairs in ABBA order: round 2k runs `levels` rotated by k, round 2k+1 the same backwards.

    Within each pair every level's two positions add up to len - 1, so a drift that is linear
    over the pair adds the same to every level; the rotation changes which level leads.
    """
    shift = (round_index // 2) % len(levels)
    order = levels[shift:] + levels[:shift]
    return order[::-1] if round_index % 2 else order


def plan_phases(
    media: list[MediaSpec],
    concurrencies: list[int],
    levels: list[Level],
    rounds: int,
    waves: int,
    split_pairs: int = 0,
) -> list[Phase]:
    """Every phase of the run, in the order it runs (see the module docstring)."""
    phases = []
    for rnd in range(rounds):
        order = level_order(levels, rnd)
        for spec in media:
            phases += [Phase(rnd, spec, 1, level, split_pairs, True) for level in order if split_pairs]
            for concurrency in concurrencies:
                phases += [Phase(rnd, spec, concurrency, level, waves * concurrency) for level in order]
    return phases


def media_part(spec: MediaSpec, seed: int, image_size: int, frame_size: int) -> dict[str, Any]:
    """A fresh random image (PNG) or video (vLLM's video/jpeg frame list) content part."""
    if spec.kind == "image":
        return image_part(png_data_url(random_image(seed, image_size, image_size)))
    return video_part(jpeg_video_data_url(random_video(seed, spec.frames, frame_size))[0])


def chat_body(
    model: str,
    part: dict[str, Any],
    kind: str,
    max_tokens: int,
    aim: str | None = None,
    mm_processor_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A streaming chat request generating exactly `max_tokens` tokens.

    `aim` is the gateway's body field; `mm_processor_kwargs` is for requests sent to an engine
    directly. `return_token_ids` makes vLLM send a chunk for every token, so the first token is
    seen even when its text is empty.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": [part, {"type": "text", "text": PROMPTS[kind]}]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }
    if aim is not None:
        body["aim"] = aim
    if mm_processor_kwargs is not None:
        body["mm_processor_kwargs"] = mm_processor_kwargs
    return body
