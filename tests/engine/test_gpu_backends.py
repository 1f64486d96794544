"""GPU tier (`pytest -m gpu`, a CUDA machine with vLLM 0.32): the engine tests on GPU backends.

The CPU suite checks the compaction mechanism on the FLASH_ATTN / TRITON_ATTN builders themselves
(tests/attention/test_backends.py); here the same engine checks as tests/engine/test_pruning.py
run with their kernels, through `aim-vllm engine` with its defaults (V1 runner, torch.compile with
piecewise CUDA graphs, prefix caching, chunked prefill): the decodes of pruned requests replay the
compiled pieces around attention that reads AIM's per-layer metadata, and a short pruning prefill
is padded to a captured size, which the eager pruning loop must cut off and restore.
TRITON_ATTN computes in float32 like the CPU engine (the reference's 1e-4); FlashAttention has no
float32 kernels, so FLASH_ATTN runs bfloat16 against the float32 reference with a bf16 tolerance,
and against plain vLLM on the same backend exactly.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from aim_vllm.core.schedule import AimSchedule
from tests.engine import servers
from tests.engine.client import (
    LOGPROB_TOL,
    Media,
    aim_kwargs,
    assert_matches_reference,
    chat,
    image_item,
    video_item,
)

pytestmark = pytest.mark.gpu

QUESTION = "What colour is the square?"
BACKENDS = {"TRITON_ATTN": ("float32", LOGPROB_TOL), "FLASH_ATTN": ("bfloat16", 0.1)}
SCHEDULES = [AimSchedule(0.25), AimSchedule(1.0, (1, 4)), AimSchedule(0.25, (1, 4)), AimSchedule(0.5, (0, 6))]


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def gpu_engine(backend, tiny_model_dir, tmp_path_factory):
    dtype = BACKENDS[backend][0]
    log = tmp_path_factory.mktemp(f"gpu-{backend}") / "log.txt"
    server = servers.start(
        tiny_model_dir, log, "--attention-backend", backend, "--dtype", dtype, compiled=True
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def image() -> Media:
    return image_item(3, 500, 260)


@pytest.fixture(scope="module")
def video() -> Media:
    return video_item(4, 8)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=str)
@pytest.mark.parametrize("kind", ["image", "video"])
def test_pruning_matches_reference(gpu_engine, backend, reference, image, video, kind, schedule) -> None:
    item = image if kind == "image" else video
    response = chat(gpu_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=8)
    expected = "pruned" if schedule.prune_layers else "not requested"
    assert response["usage"]["aim"]["pruning"] == expected
    assert_matches_reference(reference, response, [item], schedule, BACKENDS[backend][1])


def test_a_short_pruning_prefill_padded_for_cuda_graphs(gpu_engine, backend, reference) -> None:
    """Two frames at merge 0.125: a prompt well under the largest captured size, so the runner pads
    the step's rows; 16 decode steps replay the piecewise graphs over compacted KV."""
    short = video_item(6, 2)
    schedule = AimSchedule(0.125, (1, 4))
    response = chat(gpu_engine, [short], QUESTION, aim_kwargs(schedule), max_tokens=16)
    assert response["usage"]["aim"]["pruning"] == "pruned"
    assert response["usage"]["prompt_tokens"] < 512
    assert_matches_reference(reference, response, [short], schedule, BACKENDS[backend][1])


def test_mixed_batch(gpu_engine, backend, reference, image, video) -> None:
    jobs = [
        ([video], AimSchedule()),
        ([image], AimSchedule(0.5)),
        ([video], AimSchedule(1.0, (1, 3))),
        ([], AimSchedule()),
        ([image], AimSchedule(0.25, (2, 6))),
        ([video], AimSchedule(0.125, (3, 5))),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(
            pool.map(lambda job: chat(gpu_engine, job[0], QUESTION, aim_kwargs(job[1]), 6), jobs)
        )
    for (items, schedule), response in zip(jobs, responses, strict=True):
        assert_matches_reference(reference, response, items, schedule, BACKENDS[backend][1])


def test_off_is_identical_to_plain_vllm_on_the_same_backend(
    gpu_engine, backend, tiny_model_dir, video, tmp_path
) -> None:
    dtype = BACKENDS[backend][0]
    plain = servers.start(
        tiny_model_dir,
        tmp_path / "plain.txt",
        "--attention-backend",
        backend,
        "--dtype",
        dtype,
        plain=True,
        compiled=True,
    )
    try:
        stock = chat(plain, [video], QUESTION)
    finally:
        plain.stop()
    ours = chat(gpu_engine, [video], QUESTION)
    assert ours["choices"][0]["token_ids"] == stock["choices"][0]["token_ids"]
    assert ours["choices"][0]["logprobs"] == stock["choices"][0]["logprobs"]
