"""Real checkpoints out of the box: every supported architecture from its published config.

Each config keeps its published widths, vocabulary, processors and length limits (LLaVA-1.5: 4096
positions; Qwen2.5-VL: 128k; LLaVA-OneVision: 32k) but only one LLM layer
(`model_builders.shrink_checkpoint`), and is served with dummy weights through `aim-vllm serve`
with no other flag than `--enforce-eager` (compiling a published width's graph takes minutes on
two cores): the engine's defaults must fit the checkpoint (`--max-model-len` from it).
One image and, where the architecture has them, one video, each through the gateway at
`balanced`; the answers are random tokens, what counts is that they come with AIM's usage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from aim_vllm.model_builders import default_model_dir
from tests.engine import media, servers

# One size per architecture in the default tier; the other published sizes under `-m slow`
# (a minute each here: an engine start, and CPU work at the published widths).
CASES = [
    ("llava-onevision", "0.5b"),
    pytest.param("llava-onevision", "7b", marks=pytest.mark.slow),
    ("qwen2.5-vl", "3b"),
    pytest.param("qwen2.5-vl", "7b", marks=pytest.mark.slow),
    ("llava-1.5", "7b"),
]
VIDEO = {"llava-onevision", "qwen2.5-vl"}  # LLaVA-1.5 takes images only
STARTUP_S = 900


@pytest.fixture(scope="module")
def parts() -> dict[str, dict]:
    image = media.png_data_url(media.image(seed=31, width=400, height=300))
    video, _ = media.jpeg_video_data_url(media.video_frames(seed=32, frames=4))
    return {
        "image": {"type": "image_url", "image_url": {"url": image}},
        "video": {"type": "video_url", "video_url": {"url": video}},
    }


@pytest.mark.parametrize(("arch", "size"), CASES, ids=lambda value: value)
def test_serve_answers_an_image_and_a_video(arch: str, size: str, parts, tmp_path) -> None:
    model = default_model_dir(arch, size, layers=1)
    port = servers.free_port()
    command = [sys.executable, "-m", "aim_vllm.cli", "serve", "--model", str(model), "--port", str(port)]
    command += ["--log-dir", str(tmp_path), "--", "--load-format", "dummy", "--enforce-eager"]
    with (tmp_path / "serve.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url, tmp_path)
        model_name = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        for kind in ["image", "video"] if arch in VIDEO else ["image"]:
            body = {
                "model": model_name,
                "messages": [
                    {"role": "user", "content": [parts[kind], {"type": "text", "text": "What is it?"}]}
                ],
                "max_tokens": 2,
                "aim": "balanced",
            }
            response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
            assert response.status_code == 200, (kind, response.text)
            aim = response.json()["usage"]["aim"]
            assert aim["level"] == "balanced" and aim["pruning"] == "pruned", (kind, aim)
            assert 0 < aim["visual_tokens_merged"] < aim["visual_tokens_in"], (kind, aim)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)


def _wait_ready(process: subprocess.Popen, url: str, logs) -> None:
    deadline = time.monotonic() + STARTUP_S
    while True:
        if process.poll() is not None:
            text = "\n".join(p.read_text()[-3000:] for p in sorted(logs.glob("*.log")))
            pytest.fail(f"aim-vllm serve exited with {process.returncode}:\n{text}")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "aim-vllm serve did not become ready"
        time.sleep(1)
