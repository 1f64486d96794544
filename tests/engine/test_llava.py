"""AIM on LLaVA-1.5 in vLLM: merging inside CLIP with its keys, pruning, AIM off == stock vLLM."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from aim_vllm.core.schedule import AimSchedule
from aim_vllm.core.token_counts import merged_token_count
from aim_vllm.reference.llava import LlavaReference
from tests.engine import servers
from tests.engine.client import (
    Media,
    aim_kwargs,
    assert_budget_resolved,
    assert_matches_reference,
    chat,
    image_item,
    reference_item,
)
from tests.engine.stock import assert_off_matches_stock

QUESTION = "What colour is the square?"
IMAGE_TOKENS = 576  # CLIP-336 / 14, CLS dropped


@pytest.fixture(scope="session")
def llava_model_dir():
    from aim_vllm.model_builders import default_model_dir

    return default_model_dir("llava-1.5")


@pytest.fixture(scope="module")
def llava_engine(llava_model_dir, tmp_path_factory):
    server = servers.start(llava_model_dir, tmp_path_factory.mktemp("llava-engine") / "log.txt")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def llava_reference(llava_model_dir) -> LlavaReference:
    return LlavaReference(llava_model_dir)


def _image(seed: int, width: int = 400, height: int = 300) -> Media:
    return image_item(seed, width, height)


@pytest.fixture(scope="module")
def image() -> Media:
    return _image(0)


def test_off_is_identical_to_plain_vllm(llava_engine, llava_model_dir, image, tmp_path) -> None:
    """No AIM keys, ratio 1.0 and preset off: same prompt, tokens and logprobs as stock vLLM."""
    assert_off_matches_stock(llava_engine, llava_model_dir, [image], QUESTION, tmp_path / "plain.txt")


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.4375, 0.125, 0.3])
def test_merge_matches_reference(llava_engine, llava_reference, image, ratio) -> None:
    """Greedy tokens and logprobs equal the reference merging CLIP features by their keys (1e-4)."""
    schedule = AimSchedule(ratio)
    response = chat(llava_engine, [image], QUESTION, aim_kwargs(schedule), max_tokens=8)
    run = assert_matches_reference(llava_reference, response, [image], schedule)
    assert response["usage"]["prompt_tokens"] == run.num_prompt_tokens


def test_placeholder_count_is_the_merged_count(llava_engine, image) -> None:
    """576 -> 288 -> 252 at 43.75% and -> 72 at 12.5% (the paper's counts); usage says so."""
    off = chat(llava_engine, [image], QUESTION, max_tokens=1)["usage"]
    text = off["prompt_tokens"] - IMAGE_TOKENS
    for ratio, expected in ((0.4375, 252), (0.125, 72), (0.3, merged_token_count(576, 0.3))):
        usage = chat(llava_engine, [image], QUESTION, {"aim_merge_ratio": ratio}, max_tokens=1)["usage"]
        assert usage["prompt_tokens"] == text + expected
        assert (usage["aim"]["visual_tokens_in"], usage["aim"]["visual_tokens_merged"]) == (576, expected)


def test_prompt_logprobs_of_a_merged_image(llava_engine, llava_reference, image) -> None:
    """Every prompt position matches the reference at 43.75% merge."""
    response = chat(
        llava_engine, [image], QUESTION, {"aim_merge_ratio": 0.4375}, max_tokens=2, prompt_logprobs=1
    )
    ids = response["prompt_token_ids"]
    expected = llava_reference.prompt_logprobs(ids, [reference_item(llava_reference, image, 0.4375)])
    for position, (token, entry, want) in enumerate(
        zip(ids, response["prompt_logprobs"], expected, strict=True)
    ):
        if want is not None:
            assert abs(entry[str(token)]["logprob"] - want) < 1e-4, position


def test_pruning_matches_reference(llava_engine, llava_reference, image) -> None:
    """Merge inside CLIP + in-LLM pruning on the LLaMA layers (real removal) == the reference."""
    schedule = AimSchedule(0.4375, (1, 4))
    response = chat(llava_engine, [image], QUESTION, aim_kwargs(schedule), max_tokens=8)
    assert response["usage"]["aim"]["pruning"] == "pruned"
    assert_matches_reference(llava_reference, response, [image], schedule)


@pytest.mark.parametrize(
    "schedule",
    [AimSchedule(encoder_keep=0.5), AimSchedule(0.4375, (1, 4), encoder_keep=0.3)],
    ids=["encoder", "merge+prune+encoder"],
)
def test_encoder_merging_matches_reference(llava_engine, llava_reference, image, schedule) -> None:
    """CLIP run merged from its start layer (CLS apart; vLLM's layers) == transformers' layers (1e-4)."""
    response = chat(llava_engine, [image], QUESTION, aim_kwargs(schedule), max_tokens=8)
    assert response["usage"]["aim"]["encoder_keep"] == schedule.encoder_keep
    assert 0.0 < response["usage"]["aim"]["encoder_flops_ratio"] < 1.0
    assert_matches_reference(llava_reference, response, [image], schedule)


def test_concurrent_requests_with_different_levels(llava_engine, llava_reference) -> None:
    """Images batched through one CLIP pass with different ratios, each equal to its own reference."""
    jobs = [
        (_image(1), AimSchedule(0.4375)),
        (_image(2, 500, 260), AimSchedule(0.125)),
        (_image(3), AimSchedule()),
        (_image(4, 336, 336), AimSchedule(0.5, (2, 5))),
        (_image(5), AimSchedule(1.0, (0, 6))),
        (_image(6), AimSchedule(0.3)),
        (_image(7), AimSchedule(encoder_keep=0.5)),
        (_image(8), AimSchedule(0.4375, encoder_keep=0.25)),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(chat, llava_engine, [m], QUESTION, aim_kwargs(s), 6) for m, s in jobs]
        responses = [f.result() for f in futures]
    for (item, schedule), response in zip(jobs, responses, strict=True):
        assert_matches_reference(llava_reference, response, [item], schedule)


def test_budget_level_stays_within_its_flops(llava_engine, llava_model_dir, image) -> None:
    """`aim_budget` resolves on the engine (this model's layout: one group of the image's tokens)
    to the solver's schedule, within the budget."""
    usage = chat(llava_engine, [image], QUESTION, {"aim_budget": 0.3}, max_tokens=1)["usage"]
    assert_budget_resolved(llava_model_dir, usage, 0.3, (usage["aim"]["visual_tokens_in"],))


@pytest.mark.parametrize(
    "aim",
    [{"aim_merge_ratio": -0.5}, {"aim_merge_ratio": True}, {"aim_prune_l1": 3, "aim_prune_l2": 2}],
)
def test_bad_values_are_clear_400s(llava_engine, image, aim) -> None:
    """Invalid levels are refused with a 400 naming the problem."""
    body = {
        "model": llava_engine.model,
        "messages": [{"role": "user", "content": [image.part, {"type": "text", "text": QUESTION}]}],
        "max_tokens": 1,
        "mm_processor_kwargs": aim,
    }
    response = httpx.post(llava_engine.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "aim" in message or "merge_ratio" in message or "prune" in message


def test_two_tensor_parallel_ranks_merge_and_prune_like_the_reference(
    llava_model_dir, llava_reference, image, tmp_path
) -> None:
    """TP=2: CLIP's keys are averaged over both ranks' heads and pruning ranks with all heads, so
    merging inside CLIP and pruning give the reference's answers."""
    server = servers.start_tensor_parallel(llava_model_dir, tmp_path / "log.txt")
    try:
        for schedule in (AimSchedule(0.4375), AimSchedule(0.125, (1, 4)), AimSchedule(1.0, (0, 6))):
            response = chat(server, [image], QUESTION, aim_kwargs(schedule), max_tokens=6, timeout=300)
            assert_matches_reference(llava_reference, response, [image], schedule)
    finally:
        server.stop()
