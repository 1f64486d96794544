"""Frames as a video (opt-in): consecutive image parts of a message sent to the engine as one video.

Evaluation harnesses that speak the OpenAI API (lmms-eval's `openai_compatible` model) send a
video as its sampled frames, each an `image_url` part. The engine would then treat every frame as
a separate image (LLaVA-OneVision: anyres tiling, ~1,500 tokens per frame instead of 196, and no
video merging). With the option on (`Settings.frames_as_video`, or the request's
`aim_frames_as_video`), each run of two or more consecutive `image_url` parts of a user message
becomes one `video_url` part at the run's place: vLLM's `video/jpeg` frame list (comma-separated
base64 images, PNG or JPEG, one per frame). A single image stays an image. The parts were
already checked as images (`media.py`: each frame within `max_media_bytes` and the pixel cap);
the video is checked as one: at most `max_video_frames` frames, all the same size (vLLM stacks
them). Its total is bounded by the body cap, which `frames_as_video` raises to fit lmms-eval's
32 full-resolution PNG frames (`config.FRAME_LIST_BODY_BYTES`).
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from server.errors import MediaPolicyError
from server.media import MediaLimits, parse_data_url

FRAME_LIST_TYPE = "video/jpeg"  # vLLM 0.32 `VideoMediaIO.load_base64`: any image format per frame


def frames_to_videos(messages: list[dict[str, Any]], limits: MediaLimits) -> int:
    """Rewrite the messages in place (see module docstring); returns the number of videos made."""
    made = 0
    for i, message in enumerate(messages):
        parts = message.get("content")
        if message.get("role") != "user" or not isinstance(parts, list):
            continue
        out: list[Any] = []
        for run in _runs(parts):
            if len(run) < 2:
                out.extend(run)
                continue
            out.append(_video_of(run, limits, f"messages[{i}].content"))
            made += 1
        message["content"] = out
    return made


def _runs(parts: list[Any]) -> list[list[Any]]:
    """The parts in order, consecutive image parts grouped (every other part alone)."""
    runs: list[list[Any]] = []
    for part in parts:
        is_image = isinstance(part, dict) and part.get("type") == "image_url"
        if is_image and runs and runs[-1][0].get("type") == "image_url":
            runs[-1].append(part)
        else:
            runs.append([part])
    return runs


def _video_of(images: list[dict[str, Any]], limits: MediaLimits, param: str) -> dict[str, Any]:
    if len(images) > limits.max_frames:
        raise MediaPolicyError(f"{len(images)} frames in one video; at most {limits.max_frames}", param=param)
    payloads, sizes = [], set()
    for part in images:
        url = part["image_url"]["url"]
        _, data = parse_data_url(url, limits.max_bytes)
        assert isinstance(data, bytes)  # an image data URL (checked in media.py)
        with Image.open(io.BytesIO(data)) as image:  # header only; checked formats and sizes
            sizes.add(image.size)
        payloads.append(url.partition(",")[2])
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise MediaPolicyError(f"the frames of one video must have one size, got {shown}", param=param)
    return {"type": "video_url", "video_url": {"url": f"data:{FRAME_LIST_TYPE};base64," + ",".join(payloads)}}
