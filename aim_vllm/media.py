"""Images and videos as OpenAI content-part data URLs, decoded exactly as vLLM decodes them.

Used by benchmarks, evaluation and tests. Videos use vLLM's `video/jpeg` data URL: base64 JPEG
frames separated by commas (vllm==0.32.0 `VideoMediaIO.load_base64`), which needs no video codec.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def random_image(seed: int = 0, width: int = 400, height: int = 300) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8"))


def random_video(seed: int = 1, frames: int = 8, size: int = 384) -> np.ndarray:
    """Frames [F, size, size, 3] uint8."""
    rng = np.random.default_rng(seed)
    return (rng.random((frames, size, size, 3)) * 255).astype("uint8")


def png_data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def jpeg_video_data_url(frames: np.ndarray, quality: int = 95) -> tuple[str, np.ndarray]:
    """The data URL of `frames` and the frames as vLLM will decode them (JPEG is lossy)."""
    parts, decoded = [], []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        parts.append(base64.b64encode(buf.getvalue()).decode())
        decoded.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return "data:video/jpeg;base64," + ",".join(parts), np.stack(decoded)


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}
