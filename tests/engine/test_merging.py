"""AIM merging in vLLM: merged counts, exactness against the reference, levels per request."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from aim_vllm.core.schedule import AimSchedule
from tests.engine import servers
from tests.engine.client import Media, aim_kwargs, assert_matches_reference, chat, image_item, video_item
from tests.engine.stock import assert_same_answer

QUESTION = "What colour is the square?"


@pytest.fixture(scope="module")
def image() -> Media:
    return image_item(0)


@pytest.fixture(scope="module")
def video() -> Media:
    return video_item(1, 8)


@pytest.fixture(scope="module")
def plain_engine(tiny_model_dir, tmp_path_factory):
    """Stock vLLM (plugin disabled, its own defaults: compiled) on the same model, for the AIM-off
    comparison with the session's engine."""
    log = tmp_path_factory.mktemp("plain") / "log.txt"
    server = servers.start(tiny_model_dir, log, plain=True, compiled=True)
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("aim", "seed"),
    [(None, 100), ({"aim_merge_ratio": 1.0}, 101), ({"aim_preset": "off"}, 102)],
    ids=["absent", "1.0", "off"],
)
def test_off_is_identical_to_plain_vllm(aim_engine, plain_engine, aim, seed) -> None:
    """AIM off must cost nothing in correctness: same prompt, tokens and logprobs as stock vLLM, on
    media neither engine has seen (the session's engine has cached this module's image), then on its
    repeat, a prefix cache hit in both (a hit computes the rest of the prompt alone, which moves
    logprobs by float rounding: compare like with like)."""
    for item in (image_item(seed), video_item(seed, 8)):
        for _ in ("cold", "cached"):
            assert_same_answer(chat(aim_engine, [item], QUESTION, aim), chat(plain_engine, [item], QUESTION))


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.3])
@pytest.mark.parametrize("kind", ["image", "video"])
def test_merge_matches_reference(aim_engine, reference, image, video, kind, ratio) -> None:
    """Greedy tokens and logprobs equal the reference forward with the same merge (fp32, 1e-4)."""
    item = image if kind == "image" else video
    schedule = AimSchedule(ratio)
    response = chat(aim_engine, [item], QUESTION, aim_kwargs(schedule))
    run = assert_matches_reference(reference, response, [item], schedule)
    assert response["usage"]["prompt_tokens"] == run.num_prompt_tokens


def test_placeholder_count_is_the_merged_count(aim_engine, video) -> None:
    """8 frames x 196 -> 49 per frame + 1 newline at 25%; usage reflects the merged prompt."""
    off = chat(aim_engine, [video], QUESTION, max_tokens=1)
    merged = chat(aim_engine, [video], QUESTION, {"aim_merge_ratio": 0.25}, max_tokens=1)
    text = off["usage"]["prompt_tokens"] - (8 * 196 + 1)
    assert merged["usage"]["prompt_tokens"] == text + 8 * 49 + 1
    aim = merged["usage"]["aim"]
    assert (aim["visual_tokens_in"], aim["visual_tokens_merged"]) == (8 * 196 + 1, 8 * 49 + 1)


def test_concurrent_requests_with_different_levels(aim_engine, reference, image, video) -> None:
    """8 requests batched together, each with its own level, each equal to its own reference."""
    ratios = [1.0, 0.5, 0.25, 0.3, 0.75, 0.125, 0.5, 0.25]
    jobs = [(image if i % 2 else video, AimSchedule(r)) for i, r in enumerate(ratios)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(chat, aim_engine, [m], QUESTION, aim_kwargs(s)) for m, s in jobs]
        responses = [f.result() for f in futures]
    for (item, schedule), response in zip(jobs, responses, strict=True):
        assert_matches_reference(reference, response, [item], schedule)


def test_processor_cache_never_mixes_levels(aim_engine, image) -> None:
    """The same image at alternating levels always gets its own level's token count."""
    counts = {}
    for ratio in (0.25, 1.0, 0.25, 0.5, 1.0, 0.5):
        response = chat(aim_engine, [image], QUESTION, {"aim_merge_ratio": ratio}, max_tokens=1)
        counts.setdefault(ratio, set()).add(response["usage"]["prompt_tokens"])
    assert all(len(values) == 1 for values in counts.values())
    assert counts[0.25] != counts[0.5] != counts[1.0]


@pytest.mark.parametrize(
    "aim",
    [
        {"aim_merge_ratio": 0},
        {"aim_merge_ratio": -0.5},
        {"aim_merge_ratio": 1.5},
        {"aim_merge_ratio": "0.5"},
        {"aim_merge_ratio": True},
        {"aim_preset": "fast"},
        {"aim_budget": 0},
        {"aim_prune_l1": 2},
        {"aim_prune_l1": 3, "aim_prune_l2": 2},
        {"aim_prune_l1": 1, "aim_prune_l2": 99},
        {"aim_preset": "max", "aim_budget": 0.5},
        {"aim_merge_ratio": 0.5, "aim_budget_of": "llm:0.9"},  # the engine's own note
    ],
)
def test_bad_values_are_clear_400s(aim_engine, image, aim) -> None:
    """Invalid levels are refused with a 400 in the OpenAI error shape, naming the problem."""
    body = {
        "model": aim_engine.model,
        "messages": [{"role": "user", "content": [image.part, {"type": "text", "text": QUESTION}]}],
        "max_tokens": 1,
        "mm_processor_kwargs": aim,
    }
    response = httpx.post(aim_engine.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "aim" in error["message"] or "merge_ratio" in error["message"] or "prune" in error["message"]
