"""Deterministic test media and their data URLs, decoded exactly as vLLM decodes them."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def image(seed: int = 0, width: int = 400, height: int = 300) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8"))


def png_data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def video_frames(seed: int = 1, frames: int = 8, size: int = 384) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((frames, size, size, 3)) * 255).astype("uint8")


def jpeg_video_data_url(frames: np.ndarray) -> tuple[str, np.ndarray]:
    """vLLM's `video/jpeg` data URL (comma-separated base64 JPEG frames) and the decoded frames."""
    parts, decoded = [], []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=95)
        parts.append(base64.b64encode(buf.getvalue()).decode())
        decoded.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return "data:video/jpeg;base64," + ",".join(parts), np.stack(decoded)
