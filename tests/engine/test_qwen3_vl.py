"""AIM on Qwen3-VL in vLLM: merging per temporal slice with DeepStack rows, M-RoPE by rule,
timestamps untouched, pruning reported as skipped, AIM off == stock (tiny model, fp32)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from aim_vllm.core.budget import VisualLayout, solve_budget
from aim_vllm.core.flops import LLMShape
from aim_vllm.core.schedule import AimSchedule
from aim_vllm.core.token_counts import merged_token_count
from aim_vllm.reference.qwen3_vl import Qwen3VLReference
from tests.engine import servers
from tests.engine.client import (
    Media,
    aim_kwargs,
    assert_matches_reference,
    chat,
    image_item,
    reference_item,
    video_item,
)

QUESTION = "What colour is the square?"
# The tiny model's processors: a 400x300 image -> 12 x 9 merged grid (patch 16, merge 2);
# 4 frames of 384x384 -> 2 temporal slices of 8 x 8, each its own `<t seconds>` run.
IMAGE_TOKENS, VIDEO_SLICES, SLICE_TOKENS = 108, 2, 64


@pytest.fixture(scope="session")
def qwen3_model_dir():
    from aim_vllm.model_builders import default_model_dir

    return default_model_dir("qwen3-vl")


@pytest.fixture(scope="module")
def qwen3_engine(qwen3_model_dir, tmp_path_factory):
    server = servers.start(qwen3_model_dir, tmp_path_factory.mktemp("qwen3-engine") / "log.txt")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def qwen3_reference(qwen3_model_dir) -> Qwen3VLReference:
    return Qwen3VLReference(qwen3_model_dir)


@pytest.fixture(scope="module")
def image() -> Media:
    return image_item(0)


@pytest.fixture(scope="module")
def video() -> Media:
    return video_item(1, 4)


def test_off_is_identical_to_plain_vllm(qwen3_engine, qwen3_model_dir, image, video, tmp_path) -> None:
    """No AIM keys and ratio 1.0: same prompt, tokens and logprobs as stock vLLM (which the AIM
    engine runs with the runner's position recompute on, so this checks it passes them through)."""
    plain = servers.start(qwen3_model_dir, tmp_path / "plain.txt", plain=True)
    try:
        expected = {item.kind: chat(plain, [item], QUESTION) for item in (image, video)}
    finally:
        plain.stop()
    for aim in (None, {"aim_merge_ratio": 1.0}):
        for item in (image, video):
            ours, stock = chat(qwen3_engine, [item], QUESTION, aim), expected[item.kind]
            assert ours["prompt_token_ids"] == stock["prompt_token_ids"]
            assert ours["choices"][0]["token_ids"] == stock["choices"][0]["token_ids"]
            assert ours["choices"][0]["logprobs"] == stock["choices"][0]["logprobs"]


@pytest.mark.parametrize("ratio", [1.0, 0.25, 0.4])
@pytest.mark.parametrize("kind", ["image", "video"])
def test_merge_matches_reference(qwen3_engine, qwen3_reference, image, video, kind, ratio) -> None:
    """Greedy tokens and logprobs equal transformers' Qwen3-VL fed the reference's merged rows
    (DeepStack levels merged with the main plan) at the reference's M-RoPE positions (fp32, 1e-4)."""
    item = image if kind == "image" else video
    schedule = AimSchedule(ratio)
    response = chat(qwen3_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=6)
    run = assert_matches_reference(qwen3_reference, response, [item], schedule)
    assert response["usage"]["prompt_tokens"] == run.num_prompt_tokens


def test_video_runs_shrink_and_timestamps_stay(qwen3_engine, video) -> None:
    """A merged video's prompt is the stock one with each slice's run of placeholders cut to k:
    the `<t seconds>` text and the vision start/end tokens of every slice are untouched; usage
    counts the item as AIM off does (its placeholder range), so FLOPs against off are exact."""
    off = chat(qwen3_engine, [video], QUESTION, max_tokens=1)
    merged = chat(qwen3_engine, [video], QUESTION, {"aim_merge_ratio": 0.25}, max_tokens=1)
    off_ids, merged_ids = off["prompt_token_ids"], merged["prompt_token_ids"]
    pad = max(set(off_ids), key=off_ids.count)  # the video placeholder: the most frequent token
    assert [t for t in off_ids if t != pad] == [t for t in merged_ids if t != pad]
    k = merged_token_count(SLICE_TOKENS, 0.25)
    assert _run_lengths(off_ids, pad) == [SLICE_TOKENS] * VIDEO_SLICES
    assert _run_lengths(merged_ids, pad) == [k] * VIDEO_SLICES
    off_aim, merged_aim = off["usage"]["aim"], merged["usage"]["aim"]
    assert merged_aim["visual_tokens_in"] == off_aim["visual_tokens_in"]
    assert merged_aim["llm_prefill_flops_off"] == off_aim["llm_prefill_flops"]
    assert merged_aim["visual_tokens_merged"] == off_aim["visual_tokens_in"] - VIDEO_SLICES * (
        SLICE_TOKENS - k
    )


def _run_lengths(ids: list[int], token: int) -> list[int]:
    lengths, run = [], 0
    for t in [*ids, None]:
        if t == token:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return lengths


def test_prompt_logprobs_follow_the_merged_positions(qwen3_engine, qwen3_reference, video) -> None:
    """Every prompt position (timestamps between slices and text after the video) matches the
    reference's M-RoPE, so the positions written after the encoder are right everywhere."""
    response = chat(
        qwen3_engine, [video], QUESTION, {"aim_merge_ratio": 0.3}, max_tokens=1, prompt_logprobs=1
    )
    ids = response["prompt_token_ids"]
    item = reference_item(qwen3_reference, video, 0.3)
    logits = qwen3_reference.logits(ids, [item], qwen3_reference.positions(ids, [item])[0])
    want = logits.log_softmax(-1)
    for i, (token, entry) in enumerate(zip(ids, response["prompt_logprobs"], strict=True)):
        if i > 0:
            assert abs(entry[str(token)]["logprob"] - float(want[i - 1, token])) < 1e-4, i


def test_pruning_is_skipped_with_its_reason(qwen3_engine, qwen3_reference, image) -> None:
    """A level that prunes merges as asked and says why it did not prune (never a silent wrong
    answer): the answer is the merge-only reference's."""
    response = chat(qwen3_engine, [image], QUESTION, aim_kwargs(AimSchedule(0.5, (1, 3))), max_tokens=4)
    aim = response["usage"]["aim"]
    assert aim["pruning"].startswith("skipped: Qwen3-VL")
    assert aim["rows_per_layer"] == [response["usage"]["prompt_tokens"]] * 4
    assert_matches_reference(qwen3_reference, response, [image], AimSchedule(0.5))


def test_concurrent_requests_with_different_levels(qwen3_engine, qwen3_reference, image, video) -> None:
    """Merged and unmerged items of both modalities batched together, each equal to its reference."""
    jobs = [(video, 0.25), (image, 0.5), (video, 1.0), (image, 1.0), (video, 0.6)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [
            pool.submit(chat, qwen3_engine, [m], QUESTION, aim_kwargs(AimSchedule(r)), 4) for m, r in jobs
        ]
        responses = [f.result() for f in futures]
    for (item, ratio), response in zip(jobs, responses, strict=True):
        assert_matches_reference(qwen3_reference, response, [item], AimSchedule(ratio))


@pytest.mark.parametrize("kind", ["image", "video"])
def test_budget_is_met_by_merging_alone(qwen3_engine, qwen3_model_dir, image, video, kind) -> None:
    """`aim_budget` resolves to the solver's merge-only schedule (this engine cannot prune) for
    this prompt's layout: one group per slice, a video's timestamp text counted as unmerged
    tokens of the item, as usage counts it; the reported FLOPs ratio stays within the budget."""
    item, groups = (image, (IMAGE_TOKENS,)) if kind == "image" else (video, (SLICE_TOKENS,) * VIDEO_SLICES)
    usage = chat(qwen3_engine, [item], QUESTION, {"aim_budget": 0.4}, max_tokens=1)["usage"]
    aim = usage["aim"]
    shape = LLMShape.from_hf_config(json.loads((qwen3_model_dir / "config.json").read_text()))
    layout = VisualLayout(groups, aim["visual_tokens_in"] - sum(groups))
    want = solve_budget(0.4, shape, layout, usage["prompt_tokens"] - aim["visual_tokens_merged"], prune=False)
    assert (aim["merge_ratio"], aim["prune_layers"]) == (want.merge_ratio, None)
    assert want.merge_ratio < 1.0 and aim["flops_ratio"] <= 0.4


def test_encoder_merging_is_refused(qwen3_engine, image) -> None:
    """`encoder_keep` is not available for Qwen3-VL: a clear 400, not a silent no-op."""
    import httpx

    body = {
        "model": qwen3_engine.model,
        "messages": [{"role": "user", "content": [image.part, {"type": "text", "text": QUESTION}]}],
        "max_tokens": 1,
        "mm_processor_kwargs": {"aim_encoder_keep": 0.5},
    }
    response = httpx.post(qwen3_engine.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400, response.text
    assert "encoder_keep" in response.json()["error"]["message"]


def test_two_tensor_parallel_ranks_merge_like_the_reference(
    qwen3_model_dir, qwen3_reference, image, video, tmp_path
) -> None:
    """TP=2 (LLM heads and ViT heads split over ranks): every rank merges the same rows with the
    same plan, and the answers are the reference's."""
    server = servers.start_tensor_parallel(qwen3_model_dir, tmp_path / "log.txt")
    try:
        for item, ratio in ((video, 0.25), (image, 0.5), (video, 1.0)):
            schedule = AimSchedule(ratio)
            response = chat(server, [item], QUESTION, aim_kwargs(schedule), max_tokens=6, timeout=300)
            assert_matches_reference(qwen3_reference, response, [item], schedule)
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("size", ["2b", "4b", "8b"])
def test_published_config_serves_an_image_and_a_video(size, image, video, tmp_path) -> None:
    """`make-tiny-model --arch qwen3-vl --size <size> --layers 1`: the published widths, ViT and
    processors with one LLM layer and the DeepStack taps moved into the shrunk tower, served with
    dummy weights; one image and one video through the gateway at `balanced` merge (pruning is
    reported skipped) and count their tokens."""
    import httpx

    from aim_vllm.model_builders import default_model_dir

    model = default_model_dir("qwen3-vl", size, layers=1)
    server = servers.start(model, tmp_path / "log.txt", "--load-format", "dummy")
    try:
        with servers.running_gateway(server.url) as url:
            for item in (image, video):
                body = {
                    "model": server.model,
                    "messages": [
                        {"role": "user", "content": [item.part, {"type": "text", "text": QUESTION}]}
                    ],
                    "max_tokens": 2,
                    "aim": "balanced",
                }
                response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
                assert response.status_code == 200, (item.kind, response.text)
                aim = response.json()["usage"]["aim"]
                assert aim["level"] == "balanced" and aim["pruning"].startswith("skipped: Qwen3-VL"), aim
                assert 0 < aim["visual_tokens_merged"] < aim["visual_tokens_in"], (item.kind, aim)
    finally:
        server.stop()
