"""The embedded default model (tiny LLaVA-OneVision trained on synthetic colour QA) in vLLM.

Trains it on first use (`model_builders.trained_model_dir`, ~7 min on 2 cores, then cached), serves
it with the plugin and asks held-out colour questions it never saw, as images and 8-frame videos,
with and without AIM: the answers must be right, not just well-formed.
"""

from __future__ import annotations

import httpx
import pytest
from PIL import Image, ImageDraw

from aim_vllm.media import jpeg_video_data_url, png_data_url
from aim_vllm.model_builders import trained_model_dir
from aim_vllm.synthetic import iter_items, prompt_text, render
from tests.engine import servers

HELD_OUT_SEED = 77  # training draws scenes from TrainConfig.seed and step; evaluation from eval_seed
ITEMS = list(iter_items(HELD_OUT_SEED, 8, types=("colour",)))  # 4 images, 4 videos, every colour


@pytest.fixture(scope="module")
def trained_engine(tmp_path_factory):
    server = servers.start(trained_model_dir(), tmp_path_factory.mktemp("trained") / "log.txt")
    yield server
    server.stop()


def _ask(server, item, text: str, level: str) -> tuple[str, dict]:
    frames = render(item.scene)
    if item.scene.is_video:
        part = {"type": "video_url", "video_url": {"url": jpeg_video_data_url(frames)[0]}}
    else:
        part = {"type": "image_url", "image_url": {"url": png_data_url(Image.fromarray(frames[0]))}}
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": [part, {"type": "text", "text": text}]}],
        "max_tokens": 4,
        "temperature": 0,
        "mm_processor_kwargs": {"aim_preset": level},
    }
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=600)
    assert reply.status_code == 200, reply.text
    payload = reply.json()
    return payload["choices"][0]["message"]["content"].strip(), payload["usage"]["aim"]


@pytest.mark.parametrize("level", ["off", "balanced"])
def test_answers_held_out_colour_questions(trained_engine, level) -> None:
    """Multiple choice (the letter) and the bare question (the colour word), images and videos."""
    assert {item.scene.is_video for item in ITEMS} == {False, True}
    wrong = []
    for item in ITEMS:
        q = item.question
        letter, aim = _ask(trained_engine, item, prompt_text(q.question, q.options), level)
        word, _ = _ask(trained_engine, item, prompt_text(q.question), level)
        if (letter, word) != (q.answer, q.answer_text):
            wrong.append((item.id, q.answer, q.answer_text, letter, word))
        if level == "balanced":
            assert aim["pruning"] == "pruned" and aim["visual_tokens_merged"] < aim["visual_tokens_in"]
    assert len(wrong) <= 1, wrong  # 16 answers; one slip allowed at the paper's default level


def test_the_readme_first_request(trained_engine) -> None:
    """README's example: a red square drawn with PIL (not by the generator), the bare question."""
    image = Image.new("RGB", (384, 384), (128, 128, 128))
    ImageDraw.Draw(image).rectangle((150, 150, 229, 229), fill=(220, 30, 30))
    body = {
        "model": trained_engine.model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": png_data_url(image)}},
                    {"type": "text", "text": "What colour is the square?"},
                ],
            }
        ],
        "max_tokens": 4,
        "temperature": 0,
        "mm_processor_kwargs": {"aim_preset": "balanced"},
    }
    reply = httpx.post(f"{trained_engine.url}/v1/chat/completions", json=body, timeout=600)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].strip() == "red"
