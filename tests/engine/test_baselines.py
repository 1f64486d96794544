"""Baselines in the engine (LLaVA-OneVision): equal token counts, and exact against the reference."""

from __future__ import annotations

import httpx
import pytest

from aim_vllm.core.schedule import AimSchedule
from tests.engine.client import Media, aim_kwargs, assert_matches_reference, chat, image_item, video_item

QUESTION = "Which direction does the red square move?"


@pytest.fixture(scope="module")
def video() -> Media:
    return video_item(5, 8)


@pytest.fixture(scope="module")
def image() -> Media:
    return image_item(6, 420, 380)


BASELINES = [
    AimSchedule(0.25, merge_method="pool"),
    AimSchedule(0.3, merge_method="random"),
    AimSchedule(1.0, (2, 3), prune_method="fastv", prune_keep=0.3),
    AimSchedule(0.5, (1, 4), merge_method="pool", prune_method="fastv"),
]


@pytest.mark.parametrize("schedule", BASELINES, ids=str)
@pytest.mark.parametrize("kind", ["video", "image"])
def test_baselines_match_reference(aim_engine, reference, video, image, kind, schedule) -> None:
    """Each baseline runs in the plugin exactly as its pure-torch definition."""
    item = video if kind == "video" else image
    response = chat(aim_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=5)
    assert_matches_reference(reference, response, [item], schedule)


def test_evs_matches_reference_on_videos_and_refuses_images(aim_engine, reference, video, image) -> None:
    """vLLM's EVS criterion at AIM's count (with AIM's pruning after it) equals its pure-torch
    definition; on an image (no previous frame) it is a clear 400."""
    schedule = AimSchedule(0.3, (1, 4), merge_method="evs")
    response = chat(aim_engine, [video], QUESTION, aim_kwargs(schedule), max_tokens=5)
    assert response["usage"]["aim"]["pruning"] == "pruned"
    assert_matches_reference(reference, response, [video], schedule)
    body = {
        "model": aim_engine.model,
        "messages": [{"role": "user", "content": [image.part, {"type": "text", "text": QUESTION}]}],
        "max_tokens": 1,
        "mm_processor_kwargs": aim_kwargs(schedule),
    }
    refused = httpx.post(aim_engine.url + "/v1/chat/completions", json=body, timeout=120)
    assert refused.status_code == 400
    assert "videos only" in refused.json()["error"]["message"]


def test_baselines_use_aims_token_counts(aim_engine, video) -> None:
    """Pooling / random drop / EVS give exactly AIM's merged count; FastV keeps int(N * keep) from l1 on."""
    counts = {}
    for method in ("aim", "pool", "random", "evs"):
        aim = chat(
            aim_engine, [video], QUESTION, aim_kwargs(AimSchedule(0.3, merge_method=method)), max_tokens=1
        )
        counts[method] = aim["usage"]["prompt_tokens"]
    assert len(set(counts.values())) == 1
    fastv = AimSchedule(1.0, (2, 3), prune_method="fastv", prune_keep=0.3)
    usage = chat(aim_engine, [video], QUESTION, aim_kwargs(fastv), max_tokens=1)["usage"]["aim"]
    assert usage["visual_tokens_kept"] == {"2": int(usage["visual_tokens_merged"] * 0.3)}


def test_unknown_method_is_a_400(aim_engine, video) -> None:
    body = {
        "model": aim_engine.model,
        "messages": [{"role": "user", "content": [video.part, {"type": "text", "text": QUESTION}]}],
        "max_tokens": 1,
        "mm_processor_kwargs": {"aim_merge_ratio": 0.5, "aim_merge_method": "median"},
    }
    response = httpx.post(aim_engine.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400
    assert "merge_method" in response.json()["error"]["message"]
