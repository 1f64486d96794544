"""AIM on Qwen3-VL-MoE in vLLM: the dense Qwen3-VL override over vLLM's MoE LLM (sparse MoE block
in every layer). AIM off == stock vLLM; merging, pruning and both equal transformers'
`Qwen3VLMoeForConditionalGeneration` with the removal loop (fp32, 1e-4, token-exact): the router
and the experts see only the kept rows, alone, batched with other levels, at a budget and under
TP=2. Tiny MoE (8 experts, 2 per token) with 6 LLM layers, so pruning from L = 3 has layers to
run; the published 30B-A3B widths under `-m slow`. Fixtures: `conftest`."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from aim_vllm.core.flops import prefill_flops
from aim_vllm.core.schedule import AimSchedule
from tests.engine.client import aim_kwargs, assert_matches_reference, chat
from tests.engine.qwen3.budget import assert_resolved, llm_shape, solved_schedule
from tests.engine.qwen3.checkpoints import DEEP_LAYERS, QUESTION
from tests.engine.stock import assert_off_matches_stock


def test_off_is_identical_to_plain_vllm(moe_engine, moe_dir, image, video, tmp_path) -> None:
    """No AIM keys and ratio 1.0: same prompt, tokens and logprobs as stock vLLM's
    `Qwen3VLMoeForConditionalGeneration`."""
    assert_off_matches_stock(moe_engine, moe_dir, [image, video], QUESTION, tmp_path / "plain.txt")


@pytest.mark.parametrize("ratio", [1.0, 0.25])
@pytest.mark.parametrize("kind", ["image", "video"])
def test_merge_matches_reference(moe_engine, moe_reference, image, video, kind, ratio) -> None:
    """Greedy tokens and logprobs equal transformers' Qwen3-VL-MoE fed the reference's merged rows
    (DeepStack levels merged with the main plan) at the reference's M-RoPE positions."""
    item = image if kind == "image" else video
    schedule = AimSchedule(ratio)
    response = chat(moe_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=6)
    run = assert_matches_reference(moe_reference, response, [item], schedule)
    assert response["usage"]["prompt_tokens"] == run.num_prompt_tokens


@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize(
    "schedule", [AimSchedule(1.0, (3, 6)), AimSchedule(0.5, (3, 6))], ids=["prune", "merge+prune"]
)
def test_prune_matches_reference(moe_engine, moe_reference, image, video, kind, schedule) -> None:
    """Rows dropped after layers 3-5 of 6 (after the DeepStack layers): the later layers' attention,
    router and experts run on fewer rows, and greedy tokens and logprobs equal the removal reference
    (each kept row routed on its own), prefill and decodes over the compacted KV."""
    item = image if kind == "image" else video
    response = chat(moe_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=6)
    aim = response["usage"]["aim"]
    assert aim["pruning"] == "pruned", aim
    run = assert_matches_reference(moe_reference, response, [item], schedule)
    media = set(moe_reference.visual_token_ids)
    pads = sum(token in media for token in response["prompt_token_ids"])
    kept = schedule.visual_kept(pads, DEEP_LAYERS)
    assert aim["rows_per_layer"] == [run.num_prompt_tokens - pads + v for v in [pads, *kept[:-1]]]
    assert aim["rows_per_layer"][3] == run.num_prompt_tokens > aim["rows_per_layer"][-1]


def test_mixed_batch_of_levels(moe_engine, moe_reference, image, video) -> None:
    """Off, merge-only, prune-only and merge+prune requests of both modalities at once (pruning
    prefills batched with the others' prefills and decodes, each routed on its own rows), each
    equal to its own reference."""
    jobs = [
        (video, AimSchedule(0.25, (3, 6))),
        (image, AimSchedule()),
        (video, AimSchedule(0.5)),
        (image, AimSchedule(1.0, (3, 5))),
        (video, AimSchedule(1.0)),
        (image, AimSchedule(0.6, (4, 6))),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(chat, moe_engine, [m], QUESTION, aim_kwargs(s), 5) for m, s in jobs]
        responses = [f.result() for f in futures]
    for (item, schedule), response in zip(jobs, responses, strict=True):
        assert_matches_reference(moe_reference, response, [item], schedule)
        want = "pruned" if schedule.prunes else "not requested"
        assert response["usage"]["aim"]["pruning"] == want, response["usage"]["aim"]


@pytest.mark.parametrize("budget", [0.4, 0.7])
@pytest.mark.parametrize("kind", ["image", "video"])
def test_budget_counts_the_experts_a_token_passes(
    moe_engine, moe_dir, moe_reference, image, video, kind, budget
) -> None:
    """`aim_budget` on the MoE: the FLOPs model's MLP is experts per token x expert width (2 x 32,
    not the config's dense `intermediate_size`), the stock prefill's FLOPs reported with it, the
    solver's schedule for this prompt run (merging alone where its window starts before L = 3)
    within the budget, and the answer the reference's at that schedule."""
    text = json.loads((moe_dir / "config.json").read_text())["text_config"]
    shape = llm_shape(moe_dir)
    assert shape.intermediate_size == text["num_experts_per_tok"] * text["moe_intermediate_size"]
    assert shape.intermediate_size != text["intermediate_size"]
    item = image if kind == "image" else video
    response = chat(moe_engine, [item], QUESTION, {"aim_budget": budget}, max_tokens=3)
    usage = response["usage"]
    aim = usage["aim"]
    stock_tokens = usage["prompt_tokens"] - aim["visual_tokens_merged"] + aim["visual_tokens_in"]
    assert aim["llm_prefill_flops_off"] == pytest.approx(prefill_flops([stock_tokens] * DEEP_LAYERS, shape))
    want = solved_schedule(moe_dir, usage, budget, kind)
    assert_resolved(usage, want, budget)
    assert aim["pruning"] == ("pruned" if want.prunes else "not requested"), aim
    assert_matches_reference(moe_reference, response, [item], want)


def test_two_tensor_parallel_ranks_merge_and_prune_like_the_reference(
    moe_tp_engine, moe_reference, image, video
) -> None:
    """TP=2: attention heads and every expert's width split over the ranks (vLLM pads each rank's
    16 to its CPU kernel's 32), the router on every rank; merge, prune and both: the reference's
    answers."""
    jobs = ((video, AimSchedule(0.25, (3, 6))), (image, AimSchedule(0.5, (3, 5))), (image, AimSchedule(0.5)))
    for item, schedule in jobs:
        response = chat(moe_tp_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=6, timeout=300)
        if schedule.prunes:
            assert response["usage"]["aim"]["pruning"] == "pruned", response["usage"]["aim"]
        assert_matches_reference(moe_reference, response, [item], schedule)
