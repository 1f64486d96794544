"""Tensor parallelism on the CPU engine (2 ranks, one core each): the same answers as one rank.

Under TP each rank holds half the heads; pruning must rank with all heads and keep the same rows
on every rank (`pruning/parallel.py`), and usage is written once. Every request here must answer
within `TIMEOUT_S`: a rank that fails must never leave the others waiting.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest

from aim_vllm.core.schedule import AimSchedule
from tests.engine import servers
from tests.engine.client import Media, aim_kwargs, assert_matches_reference, chat, image_item, video_item

QUESTION = "What colour is the square?"
TIMEOUT_S = 300
DEFAULT_LEVEL = "budget:0.2"  # the engine's `--aim-default`, in the one level grammar
FAIL_FAST_S = 60  # a dead rank: the request's error, and the replica out of rotation, within this
SCHEDULES = {
    "off": AimSchedule(),
    "merge": AimSchedule(0.25),
    "prune": AimSchedule(1.0, (1, 4)),
    "both": AimSchedule(0.25, (1, 4)),
    "both+encoder": AimSchedule(0.25, (1, 4), encoder_keep=0.5),  # the tower's heads split over ranks
}


@pytest.fixture(scope="module")
def tp_engine(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("tp-engine") / "log.txt"
    server = servers.start_tensor_parallel(tiny_model_dir, log, "--aim-default", DEFAULT_LEVEL)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def image() -> Media:
    return image_item(11, 420, 300)


@pytest.fixture(scope="module")
def video() -> Media:
    return video_item(12, 6)


def _chat(server, item: Media | None, schedule: AimSchedule, max_tokens: int = 6) -> dict:
    items = [item] if item is not None else []
    return chat(server, items, QUESTION, aim_kwargs(schedule), max_tokens=max_tokens, timeout=TIMEOUT_S)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("kind", ["image", "video"])
def test_two_ranks_answer_like_one_and_like_the_reference(
    tp_engine, aim_engine, reference, image, video, kind, name
) -> None:
    """Greedy tokens equal TP=1's and the reference's; logprobs within 1e-4; the same usage report."""
    item, schedule = (image if kind == "image" else video), SCHEDULES[name]
    two, one = _chat(tp_engine, item, schedule), _chat(aim_engine, item, schedule)
    assert two["choices"][0]["token_ids"] == one["choices"][0]["token_ids"]
    np.testing.assert_allclose(_logprobs(two), _logprobs(one), atol=1e-4, rtol=0)
    assert two["usage"]["aim"] == one["usage"]["aim"]
    assert two["usage"]["aim"]["pruning"] == ("pruned" if schedule.prune_layers else "not requested")
    assert_matches_reference(reference, two, [item], schedule)


def test_mixed_batch_on_two_ranks(tp_engine, reference, image, video) -> None:
    """Concurrent requests with different schedules (and none) share steps; each equals its reference."""
    jobs = [
        (video, AimSchedule(0.5, (2, 5))),
        (image, AimSchedule()),
        (video, AimSchedule(1.0, (0, 6))),
        (None, AimSchedule()),
        (image, AimSchedule(0.25, (1, 3))),
        (video, AimSchedule(0.25)),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(lambda job: _chat(tp_engine, *job), jobs))
    for (item, schedule), response in zip(jobs, responses, strict=True):
        assert_matches_reference(reference, response, [item] if item else [], schedule)


def test_requests_without_a_level_get_the_engine_default(tp_engine, video) -> None:
    """`--aim-default budget:0.2` (text grammar) applies to requests that name no level."""
    aim = chat(tp_engine, [video], QUESTION, None, max_tokens=2, timeout=TIMEOUT_S)["usage"]["aim"]
    assert aim["flops_ratio"] <= 0.2
    assert aim["merge_ratio"] < 1.0 or aim["pruning"] == "pruned"


def _logprobs(response: dict) -> list[float]:
    return [entry["logprob"] for entry in response["choices"][0]["logprobs"]["content"]]


def test_a_dead_worker_fails_requests_fast_and_leaves_rotation(tp_engine, video) -> None:
    """Last in this module (it kills the engine): rank 1 dies mid-request; the request gets an
    OpenAI-shaped error within a bound, the gateway's /ready turns unready, new requests get 503."""
    body = {
        "model": tp_engine.model,
        "messages": [{"role": "user", "content": [video.part, {"type": "text", "text": QUESTION}]}],
        "max_tokens": 4000,
        "ignore_eos": True,  # decodes for a minute unless stopped
    }
    worker = _tensor_parallel_worker(tp_engine, rank=1)
    with servers.running_gateway(tp_engine.url, health_interval_s=1.0) as url:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, url + "/v1/chat/completions", json=body, timeout=TIMEOUT_S)
            time.sleep(5)
            assert not pending.done(), "the request ended before the worker was killed"
            killed = time.monotonic()
            worker.kill()
            response = pending.result()
        assert time.monotonic() - killed < FAIL_FAST_S
        assert response.status_code in (502, 503), response.text
        error = response.json()["error"]
        assert error["message"] and error["type"]
        deadline = time.monotonic() + FAIL_FAST_S
        while httpx.get(url + "/ready", timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "the gateway still routes to the dead replica"
            time.sleep(0.5)
        after = httpx.post(url + "/v1/chat/completions", json={**body, "max_tokens": 1}, timeout=30)
        assert after.status_code == 503 and after.json()["error"]["message"]


def _tensor_parallel_worker(server, rank: int) -> psutil.Process:
    """The worker process of `rank` under a replica (vLLM titles it `VLLM::Worker_TP<rank>`)."""
    children = psutil.Process(server.replica.process.pid).children(recursive=True)
    matches = [p for p in children if f"Worker_TP{rank}" in " ".join(p.cmdline())]
    assert len(matches) == 1, [p.cmdline() for p in children]
    return matches[0]
