"""Frames as a video: consecutive image parts reach the engine as one `video/jpeg` frame list (opt-in)."""

from __future__ import annotations

import base64

import pytest

from server.errors import MediaPolicyError
from server.frames import frames_to_videos
from server.media import MediaLimits
from tests.server.fakes import FakeCluster, chat_body, data_url, image_part, png_bytes, running_gateway

CHAT = "/v1/chat/completions"
LIMITS = MediaLimits(max_bytes=1 << 20, max_pixels=1 << 20, max_frames=8)


def _frames(count: int, size: tuple[int, int] = (6, 4)) -> list[dict]:
    return [image_part(data_url(png_bytes(*size))) for _ in range(count)]


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def test_runs_of_images_become_one_video_each() -> None:
    """[text, 3 images, text, 1 image] -> [text, video of 3 frames, text, the image]; order kept."""
    frames, single = _frames(3), _frames(1)
    messages = [{"role": "user", "content": [_text("a"), *frames, _text("b"), *single]}]
    assert frames_to_videos(messages, LIMITS) == 1
    text_a, video, text_b, image = messages[0]["content"]
    assert (text_a["text"], text_b["text"], image) == ("a", "b", single[0])
    header, _, payload = video["video_url"]["url"].partition(",")
    assert video["type"] == "video_url" and header == "data:video/jpeg;base64"
    assert [base64.b64decode(p) for p in payload.split(",")] == [png_bytes(6, 4)] * 3


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([*_frames(2), *_frames(1, (4, 6))], "one size, got 4x6, 6x4"),
        (_frames(9), "9 frames in one video; at most 8"),
    ],
)
def test_a_video_is_checked_as_one(frames: list[dict], message: str) -> None:
    with pytest.raises(MediaPolicyError, match=message) as info:
        frames_to_videos([{"role": "user", "content": frames}], LIMITS)
    assert info.value.status_code == 400 and info.value.param == "messages[0].content"


@pytest.mark.parametrize(
    ("setting", "field", "videos"),
    [(True, None, 1), (False, True, 1), (True, False, 0), (False, None, 0)],
)
async def test_the_setting_or_the_request_turns_it_on(setting: bool, field: bool | None, videos: int) -> None:
    """`--frames-as-video` (lmms-eval cannot add fields) or `aim_frames_as_video` (the request wins);
    the field itself never reaches the engine, and 40 frames are one item, not 40 (cap 32)."""
    cluster = FakeCluster("a")
    extra = {} if field is None else {"aim_frames_as_video": field}
    body = chat_body([_text("what happens?"), *_frames(40)], **extra)
    async with running_gateway(cluster, frames_as_video=setting, max_video_frames=64) as (_, client):
        response = await client.post(CHAT, json=body)
    if not videos:
        assert response.status_code == 400 and "at most 32" in response.json()["error"]["message"]
        return
    assert response.status_code == 200, response.text
    (sent,) = cluster["a"].bodies
    kinds = [part["type"] for part in sent["messages"][0]["content"]]
    assert kinds == ["text", "video_url"] and "aim_frames_as_video" not in sent


async def test_lmms_eval_videos_fit_with_frames_as_video() -> None:
    """lmms-eval sends a video as 32 base64 PNG frames at the video's resolution: at 720p, noise
    frames (incompressible, the upper bound) make a body of about 115 MB. The default 32 MiB cap
    refuses it (413); with `--frames-as-video` the cap is 256 MiB and the request reaches the engine."""
    import io

    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    body = chat_body([*[image_part(url)] * 32, {"type": "text", "text": "What happens?"}])
    cluster = FakeCluster("a")
    async with running_gateway(cluster) as (_, client):
        default = await client.post(CHAT, json=body)
    async with running_gateway(cluster, frames_as_video=True, max_video_frames=64) as (_, client):
        frames = await client.post(CHAT, json=body)
    assert len(buffer.getvalue()) * 32 > 32 * 1024 * 1024  # the case is real: over the default cap
    assert default.status_code == 413
    assert frames.status_code == 200, frames.text
