"""AIM on Qwen3-VL-MoE in vLLM: the dense Qwen3-VL override over vLLM's MoE LLM (sparse MoE block
in every layer). AIM off == stock vLLM; merging, pruning and both equal transformers'
`Qwen3VLMoeForConditionalGeneration` with the removal loop (fp32, 1e-4, token-exact): the router
and the experts see only the kept rows. Tiny MoE (8 experts, 2 per token) with 6 LLM layers, so
pruning from layer L = 3 has layers to run; the published 30B-A3B widths under `-m slow`."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from aim_vllm.core.schedule import AimSchedule
from aim_vllm.reference.qwen3_vl_moe import Qwen3VLMoeReference
from tests.engine import servers
from tests.engine.client import Media, aim_kwargs, assert_matches_reference, chat, image_item, video_item
from tests.engine.stock import assert_off_matches_stock
from tests.engine.test_qwen3_vl import DEEP_LAYERS, deeper_checkpoint

QUESTION = "What colour is the square?"


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory) -> Path:
    from aim_vllm.model_builders import default_model_dir

    return deeper_checkpoint(
        default_model_dir("qwen3-vl", "tiny-moe"), tmp_path_factory.mktemp("moe") / "model"
    )


@pytest.fixture(scope="module")
def moe_engine(moe_dir, tmp_path_factory):
    server = servers.start(moe_dir, tmp_path_factory.mktemp("moe-engine") / "log.txt")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moe_reference(moe_dir) -> Qwen3VLMoeReference:
    return Qwen3VLMoeReference(moe_dir)


@pytest.fixture(scope="module")
def image() -> Media:
    return image_item(0)


@pytest.fixture(scope="module")
def video() -> Media:
    return video_item(1, 4)


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


@pytest.mark.slow
def test_published_30b_a3b_serves_an_image_and_a_video(image, video, tmp_path) -> None:
    """`make-tiny-model --arch qwen3-vl --size 30b-a3b --layers 1`: Qwen3-VL-30B-A3B-Instruct's
    widths (128 experts of 768, 8 per token), ViT and processors with one LLM layer, served with
    dummy weights (13 GB resident at fp32, about 2.4 GB more per layer); one image and one video
    through the gateway at `balanced` merge (pruning is reported skipped: no layer follows the
    DeepStack ones)."""
    from aim_vllm.model_builders import default_model_dir

    model = default_model_dir("qwen3-vl", "30b-a3b", layers=1)
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
                assert aim["level"] == "balanced" and aim["pruning"].startswith(
                    "skipped: no layer follows"
                ), aim
                assert 0 < aim["visual_tokens_merged"] < aim["visual_tokens_in"], (item.kind, aim)
    finally:
        server.stop()
