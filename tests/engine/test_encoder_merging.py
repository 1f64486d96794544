"""Merging inside the vision encoder (`encoder:<keep>`) in vLLM: exact against the reference."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from aim_vllm.core.encoder_flops import VisionShape, encoder_flops_ratio
from aim_vllm.core.schedule import AimSchedule
from tests.engine.client import Media, aim_kwargs, assert_matches_reference, chat, image_item, video_item

QUESTION = "What colour is the square?"


@pytest.fixture(scope="module")
def image() -> Media:
    return image_item(5)


@pytest.fixture(scope="module")
def video() -> Media:
    return video_item(6, 4)


@pytest.mark.parametrize(
    "schedule",
    [AimSchedule(encoder_keep=0.5), AimSchedule(0.25, (1, 2), encoder_keep=0.3)],
    ids=["encoder", "merge+prune+encoder"],
)
@pytest.mark.parametrize("kind", ["image", "video"])
def test_encoder_merging_matches_reference(aim_engine, reference, image, video, kind, schedule) -> None:
    """vLLM's tower (its own attention path) equals transformers' layers on the same merged tokens."""
    item = image if kind == "image" else video
    response = chat(aim_engine, [item], QUESTION, aim_kwargs(schedule))
    assert_matches_reference(reference, response, [item], schedule)


def test_encoder_level_is_its_own_encoder_cache_entry(aim_engine, reference, video, tiny_model_dir) -> None:
    """The same video with and without encoder merging: vLLM's encoder cache must not serve one for
    the other (it keys on the canonical AIM kwargs), and the prompt layout stays the same."""
    off = chat(aim_engine, [video], QUESTION)
    schedule = AimSchedule(encoder_keep=0.25)
    merged = chat(aim_engine, [video], QUESTION, aim_kwargs(schedule))
    assert merged["prompt_token_ids"] == off["prompt_token_ids"]
    assert merged["usage"]["aim"]["encoder_keep"] == 0.25
    tower = VisionShape.from_hf_config(json.loads((tiny_model_dir / "config.json").read_text()))
    usage = merged["usage"]["aim"]
    assert usage["encoder_flops_ratio"] == pytest.approx(encoder_flops_ratio(tower, 0.25))
    assert usage["encoder_flops_off"] == pytest.approx(4 * tower.pass_flops())  # one pass per frame
    assert usage["encoder_flops"] == pytest.approx(4 * tower.pass_flops(0.25))
    llm_off = usage["llm_prefill_flops_off"]  # the LLM part is untouched: the whole prefill in between
    whole = (usage["encoder_flops"] + llm_off) / (usage["encoder_flops_off"] + llm_off)
    assert usage["flops_ratio"] == 1.0 and usage["prefill_flops_ratio"] == pytest.approx(whole)
    assert off["usage"]["aim"]["encoder_flops_ratio"] == 1.0
    logprobs = [[e["logprob"] for e in r["choices"][0]["logprobs"]["content"]] for r in (off, merged)]
    assert logprobs[0] != logprobs[1]
    assert_matches_reference(reference, merged, [video], schedule)
    again = chat(aim_engine, [video], QUESTION)  # a prefix cache hit: float rounding of the rest only
    assert again["choices"][0]["token_ids"] == off["choices"][0]["token_ids"]
    again_logprobs = [e["logprob"] for e in again["choices"][0]["logprobs"]["content"]]
    np.testing.assert_allclose(again_logprobs, logprobs[0], atol=1e-4, rtol=0)


def test_batched_items_with_different_keeps(aim_engine, reference) -> None:
    """Frames and crops of several requests in one encoder batch, each at its own keep fraction."""
    jobs = [
        (video_item(7, 4), AimSchedule(encoder_keep=0.5)),
        (image_item(8), AimSchedule(0.5, encoder_keep=0.25)),
        (video_item(9, 4), AimSchedule(0.25)),
        (image_item(10), AimSchedule(encoder_keep=0.5)),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(chat, aim_engine, [m], QUESTION, aim_kwargs(s)) for m, s in jobs]
        responses = [f.result() for f in futures]
    for (item, schedule), response in zip(jobs, responses, strict=True):
        assert_matches_reference(reference, response, [item], schedule)


def test_whole_prefill_budget_picks_the_encoder_keep(aim_engine, reference, video) -> None:
    """`budget:<b>,encoder:auto`: the engine's solver sizes encoder and LLM together; the request
    lands within the budget of the whole prefill and runs exactly the schedule it reports."""
    response = chat(aim_engine, [video], QUESTION, {"aim_budget": 0.7, "aim_encoder_keep": "auto"})
    usage = response["usage"]["aim"]
    assert usage["encoder_keep"] < 1.0 and usage["prefill_flops_ratio"] <= 0.7
    prune = tuple(usage["prune_layers"]) if usage["prune_layers"] else None
    schedule = AimSchedule(usage["merge_ratio"], prune, encoder_keep=usage["encoder_keep"])
    assert_matches_reference(reference, response, [video], schedule)
