"""Qwen3-VL's published configs out of the box (`-m slow`: a minute or more each on two cores).

`make-tiny-model --arch qwen3-vl --size <size> --layers 1`: the published widths, ViT and
processors with one LLM layer and the DeepStack taps moved into the shrunk tower, served with
dummy weights; one image and one video through the gateway at `balanced` merge (pruning is
reported skipped: no layer follows the DeepStack ones) and count their tokens. The MoE
(30B-A3B: 128 experts of 768, 8 per token) holds 13 GB at fp32, about 2.4 GB more per layer.
"""

from __future__ import annotations

import httpx
import pytest

from tests.engine import servers
from tests.engine.qwen3.checkpoints import QUESTION


@pytest.mark.slow
@pytest.mark.parametrize("size", ["2b", "4b", "8b", "30b-a3b"])
def test_published_config_serves_an_image_and_a_video(size, image, video, tmp_path) -> None:
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
                assert aim["level"] == "balanced" and aim["pruning"].startswith(
                    "skipped: no layer follows"
                ), aim
                assert 0 < aim["visual_tokens_merged"] < aim["visual_tokens_in"], (item.kind, aim)
    finally:
        server.stop()
