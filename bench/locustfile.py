"""Load test of the aim-vllm gateway with locust: streaming chats with fresh images and videos.

    pip install locust            # any environment; nothing else is needed
    locust -f bench/locustfile.py --host http://127.0.0.1:8000 \\
        --users 16 --spawn-rate 4 --run-time 10m --headless \\
        --aim-levels off,balanced,max,budget:0.2 --media image,video8,video16

Each request is a streaming chat completion (`ignore_eos`, `--max-tokens` tokens) with a freshly
generated image or video (vLLM reuses encoder outputs of media it saw before, so repeated media
would measure a cache). Users cycle through every (media, level) combination; the level goes in
the body field `aim`. Besides locust's own row per request name (time to response headers and
failures), each request reports three custom rows:
  TTFT  <media> <level>  time to the first streamed token (ms)
  E2E   <media> <level>  time to the end of the stream (ms)
  TPOT  <media> <level>  (E2E - TTFT) / (tokens - 1) (ms)
Media are made here without third-party packages: images and video frames are baseline JPEGs of
random 8x8 colour blocks (a DC-only encoder below), sent as `image/jpeg` data URLs and vLLM's
`video/jpeg` frame lists. This file imports neither aim_vllm nor torch.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
import struct
import time

from locust import HttpUser, events, task

# Standard luminance DC Huffman table (JPEG spec, Annex K.3): code counts per length, symbols.
_DC_BITS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
_DC_VALUES = tuple(range(12))
# A one-symbol AC table: end-of-block (0x00) is the single code "0"; every block is DC-only.
_AC_BITS = (1,) + (0,) * 15
_AC_VALUES = (0,)
_BLOCK = 8


def _huffman_codes(bits: tuple[int, ...], values: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """Canonical codes (JPEG Annex C): symbol -> (code, length)."""
    codes, code, symbols = {}, 0, iter(values)
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[next(symbols)] = (code, length)
            code += 1
        code <<= 1
    return codes


_DC_CODES = _huffman_codes(_DC_BITS, _DC_VALUES)
_EOB = _huffman_codes(_AC_BITS, _AC_VALUES)[0]


class _BitWriter:
    """MSB-first bits into bytes, with JPEG's 0xFF byte stuffing; padded with 1s."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.count = 0

    def write(self, value: int, length: int) -> None:
        self.acc = (self.acc << length) | value
        self.count += length
        while self.count >= 8:
            self.count -= 8
            byte = (self.acc >> self.count) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0x00)
        self.acc &= (1 << self.count) - 1

    def flush(self) -> bytes:
        if self.count:
            self.write((1 << (8 - self.count)) - 1, 8 - self.count)
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _headers(width: int, height: int) -> bytes:
    """SOI, quantisation table (all ones), SOF0 (3 components, 4:4:4), Huffman tables, SOS."""
    components = b"".join(bytes((cid, 0x11, 0)) for cid in (1, 2, 3))
    dht_dc = bytes((0x00, *_DC_BITS, *_DC_VALUES))
    dht_ac = bytes((0x10, *_AC_BITS, *_AC_VALUES))
    return (
        b"\xff\xd8"
        + _segment(0xDB, bytes([0]) + bytes([1] * 64))  # 8-bit table 0
        + _segment(0xC0, struct.pack(">BHHB", 8, height, width, 3) + components)
        + _segment(0xC4, dht_dc)
        + _segment(0xC4, dht_ac)
        + _segment(0xDA, bytes((3, 1, 0x00, 2, 0x00, 3, 0x00, 0, 63, 0)))
    )


def _write_dc(writer: _BitWriter, diff: int) -> None:
    category = abs(diff).bit_length()
    code, length = _DC_CODES[category]
    writer.write(code, length)
    if category:
        writer.write(diff if diff > 0 else diff + (1 << category) - 1, category)
    writer.write(*_EOB)


def mosaic_jpeg(width: int, height: int, rng: random.Random) -> bytes:
    """A baseline JPEG of random-coloured 8x8 blocks (width and height multiples of 8).

    With a quantisation table of ones, a block whose only coefficient is DC = 8 * (v - 128)
    decodes to the flat value v, so each block gets a random level per component.
    """
    if width % _BLOCK or height % _BLOCK or width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive multiples of 8, got {width}x{height}")
    writer, previous = _BitWriter(), [0, 0, 0]
    for _ in range((width // _BLOCK) * (height // _BLOCK)):
        for component in range(3):
            dc = 8 * (rng.randrange(256) - 128)
            _write_dc(writer, dc - previous[component])
            previous[component] = dc
    return _headers(width, height) + writer.flush() + b"\xff\xd9"


def image_url(size: int, rng: random.Random) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(mosaic_jpeg(size, size, rng)).decode()


def video_url(frames: int, size: int, rng: random.Random) -> str:
    """vLLM's `video/jpeg` data URL: base64 JPEG frames joined by commas."""
    parts = (base64.b64encode(mosaic_jpeg(size, size, rng)).decode() for _ in range(frames))
    return "data:video/jpeg;base64," + ",".join(parts)


def media_content(media: str, size: int, rng: random.Random) -> dict:
    """`image` or `video<frames>` -> a fresh OpenAI content part."""
    if media == "image":
        return {"type": "image_url", "image_url": {"url": image_url(size, rng)}}
    if media.startswith("video") and media[5:].isdigit():
        return {"type": "video_url", "video_url": {"url": video_url(int(media[5:]), size, rng)}}
    raise ValueError(f"media must be 'image' or 'video<frames>', got {media!r}")


def chat_body(model: str, media: str, level: str, max_tokens: int, size: int, rng: random.Random) -> dict:
    question = {"type": "text", "text": f"Describe this {'image' if media == 'image' else 'video'}."}
    return {
        "model": model,
        "messages": [{"role": "user", "content": [media_content(media, size, rng), question]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,  # a chunk per token, even when its text is empty
        "aim": level,
    }


def _has_token(choice: dict) -> bool:
    return bool((choice.get("delta") or {}).get("content") or choice.get("token_ids"))


def read_stream(lines, clock=time.perf_counter) -> tuple[float | None, dict]:
    """(time of the first token chunk, final usage) from SSE lines (bytes or str)."""
    first, usage = None, {}
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        payload = json.loads(line[5:])
        if first is None and any(_has_token(c) for c in payload.get("choices") or []):
            first = clock()
        usage = payload.get("usage") or usage
    return first, usage


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--aim-levels", default="off,balanced", help="comma-separated AIM levels")
    parser.add_argument("--media", default="image,video8", help="comma-separated: image, video<frames>")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request (ignore_eos)")
    parser.add_argument("--media-size", type=int, default=384, help="image / frame side, a multiple of 8")
    parser.add_argument("--model", default="", help="model name (default: the gateway's first model)")
    parser.add_argument("--api-key", default=os.environ.get("AIM_API_KEY", ""), help="Bearer key, if any")


class GatewayUser(HttpUser):
    """One client sending streaming chats back to back, cycling through (media, level)."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rng = random.Random()
        self.headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        pairs = itertools.product(options.media.split(","), options.aim_levels.split(","))
        self.cycle = itertools.cycle(list(pairs))
        self.model = options.model or self._first_model()

    def _first_model(self) -> str:
        response = self.client.get("/v1/models", headers=self.headers, name="/v1/models")
        return response.json()["data"][0]["id"]

    @task
    def chat(self) -> None:
        options = self.environment.parsed_options
        media, level = next(self.cycle)
        body = chat_body(self.model, media, level, options.max_tokens, options.media_size, self.rng)
        name = f"{media} {level}"
        started = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions", json=body, headers=self.headers, stream=True, catch_response=True,
            name=f"chat {name}",
        ) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            first, usage = read_stream(response.iter_lines())
            ended = time.perf_counter()
            if first is None:
                response.failure("the stream carried no token")
                return
        self._report(name, started, first, ended, usage.get("completion_tokens", 0))

    def _report(self, name: str, started: float, first: float, ended: float, tokens: int) -> None:
        timings = {"TTFT": first - started, "E2E": ended - started}
        if tokens > 1:
            timings["TPOT"] = (ended - first) / (tokens - 1)
        for kind, seconds in timings.items():
            self.environment.events.request.fire(
                request_type=kind, name=name, response_time=1000 * seconds,
                response_length=tokens, exception=None, context={},
            )  # fmt: skip
