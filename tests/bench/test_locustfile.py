"""bench/locustfile.py without locust installed: its JPEG media, request bodies and stream reading.

locust is not in the shared environment, so a minimal stand-in module is put in `sys.modules`
while the file is imported. The file must import neither aim_vllm nor torch.
"""

from __future__ import annotations

import ast
import base64
import importlib
import io
import json
import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

LOCUSTFILE = Path(__file__).resolve().parents[2] / "bench" / "locustfile.py"


@pytest.fixture(scope="module")
def locustfile() -> types.ModuleType:
    listeners = types.SimpleNamespace(add_listener=lambda fn: fn)
    stand_in = types.ModuleType("locust")
    stand_in.HttpUser, stand_in.task = object, lambda fn: fn
    stand_in.events = types.SimpleNamespace(init_command_line_parser=listeners)
    saved = sys.modules.get("locust")
    sys.modules["locust"] = stand_in
    try:
        module = importlib.import_module("bench.locustfile")
    finally:
        if saved is None:
            sys.modules.pop("locust")
        else:
            sys.modules["locust"] = saved
    return module


def test_imports_only_stdlib_and_locust() -> None:
    """`pip install locust` is all a load-test machine needs."""
    tree = ast.parse(LOCUSTFILE.read_text())
    roots = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    roots |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert roots - set(sys.stdlib_module_names) == {"locust"}


def _ycc_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """JFIF YCbCr -> RGB, clipped (what the decoder does with out-of-gamut levels)."""
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    return np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1).clip(0, 255)


def test_mosaic_jpeg_decodes_to_the_drawn_blocks(locustfile: types.ModuleType) -> None:
    """Every 8x8 block decodes flat to the random YCbCr levels the encoder drew (DC-only baseline JPEG)."""
    data = locustfile.mosaic_jpeg(64, 32, random.Random(1))
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(float)
    assert rgb.shape == (32, 64, 3)
    rng = random.Random(1)
    levels = np.array([[rng.randrange(256) for _ in range(3)] for _ in range(8 * 4)], float).reshape(4, 8, 3)
    np.testing.assert_allclose(rgb[::8, ::8], _ycc_to_rgb(levels), atol=1.0)
    blocks = rgb.reshape(4, 8, 8, 8, 3)
    assert (blocks.max(axis=(1, 3)) - blocks.min(axis=(1, 3))).max() == 0


@pytest.mark.parametrize("size", [(0, 8), (12, 8), (8, 7)])
def test_mosaic_jpeg_needs_multiples_of_8(locustfile: types.ModuleType, size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="multiples of 8"):
        locustfile.mosaic_jpeg(*size, random.Random(0))


def test_chat_body_has_fresh_media(locustfile: types.ModuleType) -> None:
    """Each body carries new media (vLLM reuses encoder outputs of repeated media)."""
    rng = random.Random(0)
    first = locustfile.chat_body("m", "video3", "balanced", 16, 32, rng)
    second = locustfile.chat_body("m", "video3", "balanced", 16, 32, rng)
    url = first["messages"][0]["content"][0]["video_url"]["url"]
    assert url != second["messages"][0]["content"][0]["video_url"]["url"]
    frames = url.removeprefix("data:video/jpeg;base64,").split(",")
    assert len(frames) == 3 and Image.open(io.BytesIO(base64.b64decode(frames[0]))).size == (32, 32)
    assert (
        first["aim"] == "balanced" and first["stream"] and first["return_token_ids"] and first["ignore_eos"]
    )
    image = locustfile.chat_body("m", "image", "off", 4, 32, rng)["messages"][0]["content"][0]
    assert image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    with pytest.raises(ValueError):
        locustfile.media_content("audio", 32, rng)


def test_read_stream(locustfile: types.ModuleType) -> None:
    """The first token chunk (not the role chunk) sets TTFT; the final usage chunk gives token counts."""
    events = [
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {}, "token_ids": [5]}]},
        {"choices": [], "usage": {"completion_tokens": 2}},
    ]
    lines = [f"data: {json.dumps(e)}".encode() for e in events] + [b"", b"data: [DONE]"]
    clock = iter([1.0, 2.0, 3.0])
    first, usage = locustfile.read_stream(lines, clock=lambda: next(clock))
    assert first == 1.0 and usage == {"completion_tokens": 2}
