"""Merging inside Qwen3-VL's ViT (`encoder:<keep>`, `models.qwen3_encoder_merging`) in vLLM: each
temporal slice merged from block 1 of the tiny tower's 4, DeepStack taps after blocks 1 and 2 fed
the tokens copied back, equal to transformers' tower run the same way (fp32, 1e-4, greedy tokens),
alone, with AIM's merge, with pruning, batched with other levels and under TP=2.

The engine serves the 6-layer copy the pruning tests use (`checkpoints.deeper_checkpoint`), its
ViT's attention sharpened so that rotary positions matter (`checkpoints.sharpen_vit`, fixture
`qwen3_sharp_dir`), so one engine serves every level here; media and prompt as in `test_dense`.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from aim_vllm.core.encoder_flops import FrameVisionShape
from aim_vllm.core.schedule import AimSchedule
from tests.engine import servers
from tests.engine.client import aim_kwargs, assert_matches_reference, chat
from tests.engine.qwen3.checkpoints import QUESTION

# The tiny model's processors, in patches: a 400x300 image is one 18 x 24 slice; 4 frames of
# 384x384 are 2 slices of 16 x 16.
GRIDS = {"image": (1, 18, 24), "video": (2, 16, 16)}


@pytest.mark.parametrize(
    "schedule",
    [
        AimSchedule(encoder_keep=0.5),
        AimSchedule(0.25, encoder_keep=0.5),
        AimSchedule(0.5, (3, 6), encoder_keep=0.5),
    ],
    ids=["encoder", "merge+encoder", "merge+prune+encoder"],
)
@pytest.mark.parametrize("kind", ["image", "video"])
def test_encoder_merging_matches_reference(
    qwen3_sharp_engine, qwen3_sharp_reference, qwen3_sharp_dir, image, video, kind, schedule
) -> None:
    """The ViT merging per temporal slice (rotary angles of a merged token's first patch,
    proportional attention, DeepStack taps and the patch merger on the copied-back tokens), then
    AIM's merge and pruning as without it: equal to transformers' tower run the same way
    (`reference.encoder_merging.qwen3_merged_features`); usage reports the ViT's FLOPs."""
    item = image if kind == "image" else video
    response = chat(qwen3_sharp_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=6)
    assert_matches_reference(qwen3_sharp_reference, response, [item], schedule)
    usage = response["usage"]["aim"]
    vit = FrameVisionShape.from_hf_config(json.loads((qwen3_sharp_dir / "config.json").read_text()))
    assert usage["encoder_keep"] == schedule.encoder_keep
    assert usage["encoder_flops_off"] == pytest.approx(vit.item_flops(GRIDS[kind]))
    assert usage["encoder_flops"] == pytest.approx(vit.item_flops(GRIDS[kind], schedule.encoder_keep))
    assert usage["encoder_flops_ratio"] < 1.0 and usage["prefill_flops_ratio"] < 1.0
    if schedule.prunes:
        assert usage["pruning"] == "pruned", usage


def test_encoder_merging_changes_the_answer_and_is_its_own_cache_entry(qwen3_sharp_engine, video) -> None:
    """Not a no-op (logprobs move), and vLLM's encoder cache keys on the level: off, merged, off."""

    def logprobs(aim):
        response = chat(qwen3_sharp_engine, [video], QUESTION, aim, max_tokens=4)
        return [entry["logprob"] for entry in response["choices"][0]["logprobs"]["content"]]

    off = logprobs(None)
    merged = logprobs(aim_kwargs(AimSchedule(encoder_keep=0.25)))
    assert max(abs(a - b) for a, b in zip(off, merged, strict=True)) > 1e-4
    assert logprobs(None) == off


def test_mixed_batch_with_encoder_levels(qwen3_sharp_engine, qwen3_sharp_reference, image, video) -> None:
    """Encoder levels batched with off, merge-only and pruned requests (items of one keep from
    different requests encoded together, slices of different lengths), each equal to its own
    reference."""
    jobs = [
        (video, AimSchedule(0.25, encoder_keep=0.5)),
        (image, AimSchedule()),
        (video, AimSchedule(0.5)),
        (image, AimSchedule(0.5, (3, 6), encoder_keep=0.25)),
        (video, AimSchedule(encoder_keep=0.5)),
        (image, AimSchedule(encoder_keep=0.5)),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(chat, qwen3_sharp_engine, [m], QUESTION, aim_kwargs(s), 5) for m, s in jobs]
        responses = [f.result() for f in futures]
    for (item, schedule), response in zip(jobs, responses, strict=True):
        assert_matches_reference(qwen3_sharp_reference, response, [item], schedule)


def test_whole_prefill_budget_picks_the_encoder_keep(
    qwen3_sharp_engine, qwen3_sharp_reference, video
) -> None:
    """`budget:<b>,encoder:auto`: the solver sizes the ViT (its FLOPs model) and the LLM together;
    the request lands within the budget of the whole prefill and runs the schedule it reports."""
    response = chat(qwen3_sharp_engine, [video], QUESTION, {"aim_budget": 0.7, "aim_encoder_keep": "auto"})
    usage = response["usage"]["aim"]
    assert usage["encoder_keep"] < 1.0 and usage["prefill_flops_ratio"] <= 0.7
    prune = tuple(usage["prune_layers"]) if usage["prune_layers"] else None
    schedule = AimSchedule(usage["merge_ratio"], prune, encoder_keep=usage["encoder_keep"])
    assert_matches_reference(qwen3_sharp_reference, response, [video], schedule)


@pytest.mark.parametrize("keep", [0, 1.5])
def test_bad_encoder_keep_is_a_clear_400(qwen3_sharp_engine, image, keep) -> None:
    """An encoder keep outside (0, 1] is refused with a 400 naming it."""
    body = {
        "model": qwen3_sharp_engine.model,
        "messages": [{"role": "user", "content": [image.part, {"type": "text", "text": QUESTION}]}],
        "max_tokens": 1,
        "mm_processor_kwargs": {"aim_encoder_keep": keep},
    }
    response = httpx.post(qwen3_sharp_engine.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400, response.text
    assert "encoder_keep" in response.json()["error"]["message"]


def test_two_tensor_parallel_ranks_merge_in_the_vit_like_the_reference(
    qwen3_sharp_dir, qwen3_sharp_reference, image, video, tmp_path
) -> None:
    """TP=2: the ViT's heads and MLP split over ranks (every rank merges the same tokens with the
    same plan), then AIM's merge and pruning: the reference's answers."""
    server = servers.start_tensor_parallel(qwen3_sharp_dir, tmp_path / "log.txt")
    try:
        for item, schedule in (
            (video, AimSchedule(0.25, encoder_keep=0.5)),
            (image, AimSchedule(0.5, (3, 6), encoder_keep=0.3)),
        ):
            response = chat(server, [item], QUESTION, aim_kwargs(schedule), max_tokens=6, timeout=300)
            assert_matches_reference(qwen3_sharp_reference, response, [item], schedule)
    finally:
        server.stop()
