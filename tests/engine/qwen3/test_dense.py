"""AIM on Qwen3-VL in vLLM: merging per temporal slice with DeepStack rows, M-RoPE by rule,
timestamps untouched, pruning from layer L (after the DeepStack injections) on, AIM off ==
stock (tiny model, fp32). Fixtures: `conftest`; the 6-layer engine runs compiled."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from aim_vllm.core.schedule import AimSchedule
from aim_vllm.core.token_counts import merged_token_count
from tests.engine.client import Media, aim_kwargs, assert_matches_reference, chat, reference_item
from tests.engine.qwen3.budget import assert_resolved, solved_schedule
from tests.engine.qwen3.checkpoints import DEEP_LAYERS, QUESTION, SLICE_TOKENS, VIDEO_SLICES
from tests.engine.stock import assert_off_matches_stock


def test_off_is_identical_to_plain_vllm(qwen3_engine, qwen3_model_dir, image, video, tmp_path) -> None:
    """No AIM keys and ratio 1.0: same prompt, tokens and logprobs as stock vLLM (which the AIM
    engine runs with the runner's position recompute on, so this checks it passes them through)."""
    assert_off_matches_stock(qwen3_engine, qwen3_model_dir, [image, video], QUESTION, tmp_path / "plain.txt")


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


@pytest.mark.parametrize("method", ["pool", "random"])
@pytest.mark.parametrize("kind", ["image", "video"])
def test_baselines_match_reference(qwen3_engine, qwen3_reference, image, video, kind, method) -> None:
    """The equal-count baselines per temporal slice on whole rows (DeepStack channels reduced with
    the main ones), each token at the position of the index it stands for, equal the reference."""
    schedule = AimSchedule(0.25, merge_method=method)
    response = chat(
        qwen3_engine, [image if kind == "image" else video], QUESTION, aim_kwargs(schedule), max_tokens=4
    )
    assert_matches_reference(qwen3_reference, response, [image if kind == "image" else video], schedule)


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


@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize(
    "schedule",
    [AimSchedule(1.0, (3, 6)), AimSchedule(0.5, (3, 6)), AimSchedule(0.4, (4, 6), prune_method="fastv")],
    ids=["prune", "merge+prune", "merge+fastv"],
)
def test_prune_matches_reference(
    qwen3_deep_engine, qwen3_deep_reference, image, video, kind, schedule
) -> None:
    """Pruning from layer L on (rows dropped after layers 3-5 of 6): greedy tokens and logprobs
    equal the removal reference on transformers' layers (q/k norms, DeepStack after layers 0-2,
    PageRank on the normed and rotated q/k), prefill and the decodes over the compacted KV. Only
    placeholder rows are pruned: a video's `<t seconds>` and vision start/end text stays."""
    item = image if kind == "image" else video
    response = chat(qwen3_deep_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=6)
    aim = response["usage"]["aim"]
    assert aim["pruning"] == "pruned", aim
    run = assert_matches_reference(qwen3_deep_reference, response, [item], schedule)
    media = set(qwen3_deep_reference.visual_token_ids)
    pads = sum(token in media for token in response["prompt_token_ids"])  # a video's stamps stay
    kept = schedule.visual_kept(pads, DEEP_LAYERS)
    assert aim["rows_per_layer"] == [run.num_prompt_tokens - pads + v for v in [pads, *kept[:-1]]]
    assert aim["rows_per_layer"][3] == run.num_prompt_tokens > aim["rows_per_layer"][-1]


def test_pruning_before_the_deepstack_layers_is_refused(qwen3_deep_engine, image) -> None:
    """Explicit layers that would drop rows before the last DeepStack injection (l1 < L = 3): a 400
    naming the earliest layer, never a silently different schedule."""
    for kwargs in (aim_kwargs(AimSchedule(0.5, (1, 4))), {"aim_prune_l1": 2, "aim_prune_l2": 6}):
        response = _post(qwen3_deep_engine, image, kwargs)
        assert response.status_code == 400, response.text
        assert "l1 >= 3" in response.json()["error"]["message"]


def test_preset_window_starts_after_the_deepstack_layers(
    qwen3_deep_engine, qwen3_deep_reference, image
) -> None:
    """`max` on 6 layers is the window (1, 3); here it starts at L and keeps its width: (3, 5),
    pruned and exact."""
    response = chat(qwen3_deep_engine, [image], QUESTION, {"aim_preset": "max"}, max_tokens=4)
    aim = response["usage"]["aim"]
    assert (aim["prune_layers"], aim["pruning"]) == ([3, 5], "pruned"), aim
    assert_matches_reference(qwen3_deep_reference, response, [image], AimSchedule(0.125, (3, 5)))


def test_mixed_batch_of_pruned_merged_and_plain(
    qwen3_deep_engine, qwen3_deep_reference, image, video
) -> None:
    """Pruning prefills batched with merge-only, unmerged and other pruned requests (their
    decodes over compacted KV in the same steps), each equal to its own reference."""
    jobs = [
        (video, AimSchedule(0.25, (3, 6))),
        (image, AimSchedule(0.5)),
        (video, AimSchedule(1.0)),
        (image, AimSchedule(0.6, (3, 5))),
        (video, AimSchedule(1.0, (4, 6))),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(chat, qwen3_deep_engine, [m], QUESTION, aim_kwargs(s), 5) for m, s in jobs]
        responses = [f.result() for f in futures]
    for (item, schedule), response in zip(jobs, responses, strict=True):
        assert_matches_reference(qwen3_deep_reference, response, [item], schedule)


def _post(server, item: Media, kwargs: dict) -> httpx.Response:
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": [item.part, {"type": "text", "text": QUESTION}]}],
        "max_tokens": 1,
        "mm_processor_kwargs": kwargs,
    }
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)


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


@pytest.mark.parametrize("budget", [0.4, 0.7])
@pytest.mark.parametrize("kind", ["image", "video"])
def test_budget_prunes_after_the_deepstack_layers(
    qwen3_deep_engine, qwen3_deep_dir, qwen3_deep_reference, image, video, kind, budget
) -> None:
    """`aim_budget` resolves to the solver's schedule for this prompt's layout (one group per
    slice; a video's timestamp text, counted by usage with the item, is text the LLM never
    prunes), pruning included, unless its window starts before L = 3: then merging alone. The reported
    FLOPs ratio stays within the budget and the answer is the reference's."""
    item = image if kind == "image" else video
    response = chat(qwen3_deep_engine, [item], QUESTION, {"aim_budget": budget}, max_tokens=3)
    want = solved_schedule(qwen3_deep_dir, response["usage"], budget, kind)
    assert_resolved(response["usage"], want, budget)
    assert_matches_reference(qwen3_deep_reference, response, [item], want)


def test_two_tensor_parallel_ranks_merge_like_the_reference(
    qwen3_deep_tp_engine, qwen3_deep_reference, image, video
) -> None:
    """TP=2 (LLM heads and ViT heads split over ranks): every rank merges the same rows with the
    same plan, and the answers are the reference's (the pruning test's engine: one start for both)."""
    for item, ratio in ((video, 0.25), (image, 0.5), (video, 1.0)):
        schedule = AimSchedule(ratio)
        response = chat(
            qwen3_deep_tp_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=6, timeout=300
        )
        assert_matches_reference(qwen3_deep_reference, response, [item], schedule)


def test_two_tensor_parallel_ranks_prune_like_the_reference(
    qwen3_deep_tp_engine, qwen3_deep_reference, image, video
) -> None:
    """TP=2 pruning: each rank q/k-norms its own heads, PageRank sums over both ranks' heads and
    every rank keeps rank 0's rows, DeepStack added on every rank: the reference's answers."""
    for item, schedule in ((video, AimSchedule(0.25, (3, 6))), (image, AimSchedule(1.0, (3, 5)))):
        response = chat(
            qwen3_deep_tp_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=6, timeout=300
        )
        assert response["usage"]["aim"]["pruning"] == "pruned", response["usage"]["aim"]
        assert_matches_reference(qwen3_deep_reference, response, [item], schedule)
