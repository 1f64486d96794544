"""AIM on Qwen2.5-VL in vLLM: merging per temporal slice, M-RoPE by rule, pruning, AIM off == stock."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from aim_vllm.core.encoder_flops import WindowedVisionShape
from aim_vllm.core.schedule import AimSchedule
from aim_vllm.core.token_counts import merged_token_count
from aim_vllm.reference.qwen2_5_vl import Qwen2_5_VLReference
from tests.engine import servers
from tests.engine.client import (
    Media,
    aim_kwargs,
    assert_budget_resolved,
    assert_matches_reference,
    chat,
    image_item,
    reference_item,
    video_item,
)
from tests.engine.stock import assert_off_matches_stock

QUESTION = "What colour is the square?"
# The tiny model's processors: a 400x300 image -> 14 x 11 merged grid; 8 frames of 384x384 ->
# 4 temporal slices of 7 x 7.
IMAGE_TOKENS, VIDEO_SLICES, SLICE_TOKENS = 154, 4, 49


@pytest.fixture(scope="session")
def qwen_model_dir():
    from aim_vllm.model_builders import default_model_dir

    return default_model_dir("qwen2.5-vl")


@pytest.fixture(scope="module")
def qwen_engine(qwen_model_dir, tmp_path_factory):
    server = servers.start(qwen_model_dir, tmp_path_factory.mktemp("qwen-engine") / "log.txt")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def qwen_reference(qwen_model_dir) -> Qwen2_5_VLReference:
    return Qwen2_5_VLReference(qwen_model_dir)


@pytest.fixture(scope="module")
def image() -> Media:
    return image_item(0)


@pytest.fixture(scope="module")
def video() -> Media:
    return video_item(1, 8)


def test_off_is_identical_to_plain_vllm(qwen_engine, qwen_model_dir, image, video, tmp_path) -> None:
    """No AIM keys, ratio 1.0 and preset off: same prompt, tokens and logprobs as stock vLLM."""
    assert_off_matches_stock(qwen_engine, qwen_model_dir, [image, video], QUESTION, tmp_path / "plain.txt")


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.3])
@pytest.mark.parametrize("kind", ["image", "video"])
def test_merge_matches_reference(qwen_engine, qwen_reference, image, video, kind, ratio) -> None:
    """Greedy tokens and logprobs equal the reference with the same merge and M-RoPE rule (1e-4)."""
    item = image if kind == "image" else video
    schedule = AimSchedule(ratio)
    response = chat(qwen_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=8)
    run = assert_matches_reference(qwen_reference, response, [item], schedule)
    assert response["usage"]["prompt_tokens"] == run.num_prompt_tokens


@pytest.mark.parametrize("method", ["pool", "random"])
def test_baselines_match_reference(qwen_engine, qwen_reference, video, method) -> None:
    """The equal-count baselines per temporal slice, each token at the position of the index it
    stands for, equal the reference (1e-4)."""
    schedule = AimSchedule(0.25, merge_method=method)
    response = chat(qwen_engine, [video], QUESTION, aim_kwargs(schedule), max_tokens=4)
    assert_matches_reference(qwen_reference, response, [video], schedule)


def test_placeholder_count_is_the_merged_count(qwen_engine, image, video) -> None:
    """Placeholders = sum over slices of merged_token_count(slice tokens, r); usage says so."""
    for item, slices, per_slice in ((image, 1, IMAGE_TOKENS), (video, VIDEO_SLICES, SLICE_TOKENS)):
        off = chat(qwen_engine, [item], QUESTION, max_tokens=1)["usage"]
        merged = chat(qwen_engine, [item], QUESTION, {"aim_merge_ratio": 0.25}, max_tokens=1)["usage"]
        text = off["prompt_tokens"] - slices * per_slice
        expected = slices * merged_token_count(per_slice, 0.25)
        assert merged["prompt_tokens"] == text + expected
        assert (merged["aim"]["visual_tokens_in"], merged["aim"]["visual_tokens_merged"]) == (
            slices * per_slice,
            expected,
        )


def test_prompt_logprobs_follow_the_merged_positions(qwen_engine, qwen_reference, video) -> None:
    """Every prompt position (text after the video included) matches the reference's M-RoPE."""
    schedule = AimSchedule(0.3)
    response = chat(qwen_engine, [video], QUESTION, aim_kwargs(schedule), max_tokens=2, prompt_logprobs=1)
    ids = response["prompt_token_ids"]
    expected = qwen_reference.prompt_logprobs(ids, [reference_item(qwen_reference, video, 0.3)])
    for position, (token, entry, want) in enumerate(
        zip(ids, response["prompt_logprobs"], expected, strict=True)
    ):
        if want is not None:
            assert abs(entry[str(token)]["logprob"] - want) < 1e-4, position


@pytest.mark.parametrize("kind", ["image", "video"])
def test_pruning_matches_reference(qwen_engine, qwen_reference, image, video, kind) -> None:
    """Merge + in-LLM pruning (real removal, M-RoPE positions of kept rows) == the reference."""
    item = image if kind == "image" else video
    schedule = AimSchedule(0.5, (1, 4))
    response = chat(qwen_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=8)
    assert response["usage"]["aim"]["pruning"] == "pruned"
    assert_matches_reference(qwen_reference, response, [item], schedule)


def test_concurrent_requests_with_different_levels(qwen_engine, qwen_reference, image, video) -> None:
    """Requests batched together, each with its own level, each equal to its own reference."""
    jobs = [
        (video, AimSchedule(0.25)),
        (image, AimSchedule(0.5)),
        (video, AimSchedule()),
        (image, AimSchedule(0.3, (2, 5))),
        (video, AimSchedule(0.75, (0, 6))),
        (image, AimSchedule(1.0)),
        (video, AimSchedule(encoder_keep=0.5)),
        (image, AimSchedule(0.5, encoder_keep=0.25)),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(chat, qwen_engine, [m], QUESTION, aim_kwargs(s), 6) for m, s in jobs]
        responses = [f.result() for f in futures]
    for (item, schedule), response in zip(jobs, responses, strict=True):
        assert_matches_reference(qwen_reference, response, [item], schedule)


@pytest.mark.parametrize(
    "schedule",
    [AimSchedule(encoder_keep=0.5), AimSchedule(0.5, (1, 4), encoder_keep=0.3)],
    ids=["encoder", "merge+prune+encoder"],
)
@pytest.mark.parametrize("kind", ["image", "video"])
def test_encoder_merging_matches_reference(
    qwen_engine, qwen_reference, qwen_model_dir, image, video, kind, schedule
) -> None:
    """The ViT merging inside each window (window and full-attention blocks, rotary position of a
    merged token's first member, proportional attention), copied back before the patch merger:
    equal to transformers' ViT run the same way (`reference.encoder_merging`), fp32 1e-4."""
    item = image if kind == "image" else video
    response = chat(qwen_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=6)
    assert_matches_reference(qwen_reference, response, [item], schedule)
    usage = response["usage"]["aim"]
    vit = WindowedVisionShape.from_hf_config(json.loads((qwen_model_dir / "config.json").read_text()))
    grid = (1, 22, 28) if kind == "image" else (VIDEO_SLICES, 14, 14)  # in patches
    assert usage["encoder_keep"] == schedule.encoder_keep
    assert usage["encoder_flops_off"] == pytest.approx(vit.item_flops(grid))
    assert usage["encoder_flops"] == pytest.approx(vit.item_flops(grid, schedule.encoder_keep))
    assert usage["encoder_flops_ratio"] < 1.0 and usage["prefill_flops_ratio"] < 1.0


def test_encoder_merging_changes_the_answer_and_is_its_own_cache_entry(qwen_engine, video) -> None:
    """Not a no-op (logprobs move), and vLLM's encoder cache keys on the level: off, merged, off."""

    def logprobs(aim):
        response = chat(qwen_engine, [video], QUESTION, aim, max_tokens=4)
        return [entry["logprob"] for entry in response["choices"][0]["logprobs"]["content"]]

    off = logprobs(None)
    merged = logprobs(aim_kwargs(AimSchedule(encoder_keep=0.25)))
    assert max(abs(a - b) for a, b in zip(off, merged, strict=True)) > 1e-4
    assert logprobs(None) == off


def test_budget_level_stays_within_its_flops(qwen_engine, qwen_model_dir, video) -> None:
    """`aim_budget` resolves on the engine (this model's layout: one merge group per temporal slice,
    8 frames in slices of 2) to the solver's schedule, within the budget."""
    usage = chat(qwen_engine, [video], QUESTION, {"aim_budget": 0.3}, max_tokens=1)["usage"]
    per_slice, rest = divmod(usage["aim"]["visual_tokens_in"], 4)
    assert rest == 0
    assert_budget_resolved(qwen_model_dir, usage, 0.3, (per_slice,) * 4)


@pytest.mark.parametrize(
    "aim",
    [
        {"aim_merge_ratio": 0},
        {"aim_merge_ratio": 1.5},
        {"aim_merge_ratio": "0.5"},
        {"aim_prune_l1": 1},
        {"aim_encoder_keep": 0},
        {"aim_encoder_keep": 1.5},
    ],
)
def test_bad_values_are_clear_400s(qwen_engine, image, aim) -> None:
    """Invalid levels are refused with a 400 naming the problem (validated before the HF processor)."""
    body = {
        "model": qwen_engine.model,
        "messages": [{"role": "user", "content": [image.part, {"type": "text", "text": QUESTION}]}],
        "max_tokens": 1,
        "mm_processor_kwargs": aim,
    }
    response = httpx.post(qwen_engine.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert any(word in message for word in ("aim", "merge_ratio", "prune", "encoder_keep"))


def test_two_tensor_parallel_ranks_merge_and_prune_like_the_reference(
    qwen_model_dir, qwen_reference, image, video, tmp_path
) -> None:
    """TP=2: merged slices (M-RoPE by rule), pruning that ranks with both ranks' heads and the ViT
    merging per window give the reference's answers, for images and videos."""
    server = servers.start_tensor_parallel(qwen_model_dir, tmp_path / "log.txt")
    try:
        for item, schedule in (
            (video, AimSchedule(0.25)),
            (image, AimSchedule(0.5, (1, 4))),
            (video, AimSchedule(0.3, (0, 6))),
            (video, AimSchedule(0.5, (1, 4), encoder_keep=0.3)),  # the ViT's heads split over ranks
        ):
            response = chat(server, [item], QUESTION, aim_kwargs(schedule), max_tokens=6, timeout=300)
            assert_matches_reference(qwen_reference, response, [item], schedule)
    finally:
        server.stop()
