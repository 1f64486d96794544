"""A fake vLLM cluster behind `httpx.MockTransport`, and helpers to drive the gateway in-process.

Each `FakeReplica` answers `/health`, `/v1/models` and `/v1/chat/completions` (JSON or SSE, with
`usage.aim` like the AIM engine). Tests steer it through plain attributes (`down`, `status`,
`gate`, `break_streams`, `hold_answers`) and read what it received (`bodies`, `headers`) and how its streams
ended (`streams_started`, `streams_closed_early`). No sockets, no sleeps.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from fastapi import FastAPI
from PIL import Image

from server.app import create_app
from server.config import Settings

ENGINE_AIM = {
    "merge_ratio": 0.25,
    "prune_layers": [14, 22],
    "visual_tokens_in": 729,
    "visual_tokens_merged": 183,
    "visual_tokens_kept": {"14": 183, "21": 0},
    "llm_prefill_flops": 1.0e12,
    "llm_prefill_flops_off": 4.0e12,
    "flops_ratio": 0.25,
    "kv_block_size": 128,
    "kv_blocks_per_layer": [2, 2, 1],
    "kv_blocks_saved": 1,
}
CONTENT_PIECES = ["Hel", "lo", "!"]


class _Stream(httpx.AsyncByteStream):
    """A response body that records whether the gateway closed it before the end."""

    def __init__(self, replica: FakeReplica, events: AsyncIterator[bytes]) -> None:
        self.replica = replica
        self.events = events
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.events:
            yield chunk
        self.finished = True

    async def aclose(self) -> None:
        if not self.finished:
            self.replica.streams_closed_early += 1
        await self.events.aclose()  # type: ignore[attr-defined]


class FakeReplica:
    def __init__(self, name: str) -> None:
        self.name = name
        self.url = f"http://{name}:8000"
        self.down = False  # refuse connections
        self.health_status = 200
        self.status = 200  # chat answers with this status (and `error` below when not 200)
        self.error = {
            "error": {"message": "bad value", "type": "BadRequestError", "param": None, "code": 400}
        }
        self.aim: dict[str, Any] | None = dict(ENGINE_AIM)
        self.gate: anyio.Event | None = None  # chat waits for it (streams: after the first token)
        self.break_streams: anyio.Event | None = None  # open streams fail once it is set
        self.hold_answers: anyio.Event | None = None  # chat waits for it before answering at all
        self.drop_next = 0  # this many chat requests lose their connection before any answer
        self.error_events = 0  # this many chat requests fail: 500, or an SSE error event after the role
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []
        self.streams_started = 0
        self.streams_closed_early = 0
        self.requests_cancelled = 0
        self.stream_started_event: anyio.Event | None = None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(self.health_status, json={})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "tiny", "object": "model"}]})
        body = json.loads(await request.aread())
        self.bodies.append(body)
        self.headers.append(request.headers)
        if self.drop_next > 0:
            self.drop_next -= 1
            raise httpx.RemoteProtocolError("server disconnected without sending a response", request=request)
        if self.hold_answers is not None:
            await self.hold_answers.wait()
            if self.down:  # killed while the request was in flight: no response at all
                raise httpx.RemoteProtocolError(
                    "server disconnected without sending a response", request=request
                )
        if self.status != 200:
            return httpx.Response(self.status, json=self.error)
        if self.error_events > 0 and not body.get("stream"):
            self.error_events -= 1
            return httpx.Response(500, json={"error": {"message": "Internal server error", "code": 500}})
        if body.get("stream"):
            self.streams_started += 1
            if self.stream_started_event is not None:
                self.stream_started_event.set()
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, stream=_Stream(self, self._events(body))
            )
        await self._wait_gate()
        return httpx.Response(200, json=self.completion(body))

    async def _wait_gate(self) -> None:
        if self.gate is None:
            return
        try:
            await self.gate.wait()
        except anyio.get_cancelled_exc_class():
            self.requests_cancelled += 1
            raise

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
        if self.aim is not None:
            usage["aim"] = dict(self.aim)
        return usage

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        message = {"role": "assistant", "content": "".join(CONTENT_PIECES)}
        return {
            "id": f"chatcmpl-{self.name}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "tiny"),
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            "usage": self.usage(),
        }

    async def _events(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            data = {"id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk", "created": 0,
                    "model": body.get("model", "tiny"), "choices": [choice]}  # fmt: skip
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        yield chunk({"role": "assistant", "content": ""})
        if self.error_events > 0:  # vLLM's way of failing a started stream
            self.error_events -= 1
            error = {
                "error": {"message": "Internal server error", "type": "InternalServerError", "code": 500}
            }
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        yield chunk({"content": CONTENT_PIECES[0]})
        await self._wait_gate()
        for piece in CONTENT_PIECES[1:]:
            if self.break_streams is not None and self.break_streams.is_set():
                raise httpx.ReadError("connection reset by peer")
            yield chunk({"content": piece})
        yield chunk({}, finish="stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage_chunk = {"id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk", "created": 0,
                           "model": body.get("model"), "choices": [], "usage": self.usage()}  # fmt: skip
            yield b"data: " + json.dumps(usage_chunk).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


class FakeCluster:
    """Replicas by host name, reached through one MockTransport; plus fake DNS and media hosts."""

    def __init__(self, *names: str) -> None:
        self.replicas = {name: FakeReplica(name) for name in names}
        self.dns: dict[str, list[str]] = {}
        self.media: dict[str, httpx.Response] = {}  # "host/path" -> response (served by address)
        self.media_requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self.handle)

    def __getitem__(self, name: str) -> FakeReplica:
        return self.replicas[name]

    @property
    def urls(self) -> list[str]:
        return [replica.url for replica in self.replicas.values()]

    async def resolve(self, host: str, port: int) -> list[str]:
        if host not in self.dns:
            raise OSError(f"unknown host {host}")
        return self.dns[host]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.replicas:
            return await self.replicas[host].handle(request)
        self.media_requests.append(request)
        key = f"{request.headers['host']}{request.url.path}"
        if key not in self.media:
            raise httpx.ConnectError(f"nothing at {key}", request=request)
        return self.media[key]


def settings_for(cluster: FakeCluster, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"upstreams": cluster.urls, "health_interval_s": 3600.0, **overrides}
    return Settings(**values)


@asynccontextmanager
async def running_gateway(
    cluster: FakeCluster, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A started gateway over `cluster` and an httpx client talking to it in-process."""
    app = create_app(
        settings_for(cluster, **overrides), transport=cluster.transport, resolver=cluster.resolve
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield app, client


def chat_body(content: Any = "Hi", **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **extra}


def image_part(url: str, kind: str = "image_url") -> dict[str, Any]:
    return {"type": kind, kind: {"url": url}}


def png_bytes(width: int = 4, height: int = 3) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb if ever decoded)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def data_url(data: bytes, media_type: str = "image/png") -> str:
    import base64

    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def sse_events(body: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [event.removeprefix("data: ") for event in body.decode().split("\n\n") if event.strip()]


async def asgi_call(
    app: FastAPI,
    path: str,
    body: bytes,
    disconnect: anyio.Event,
    headers: list[tuple[bytes, bytes]] = (),
    chunk_size: int | None = None,
) -> list[dict[str, Any]]:
    """Drive the ASGI app directly; the client disconnects once `disconnect` is set.

    With `chunk_size` the body arrives in pieces, each after a yield to the event loop, as from
    a real socket (a whole body in one message hides readers that race for `receive`).
    """
    sent: list[dict[str, Any]] = []
    size = chunk_size or max(1, len(body))
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]

    async def receive() -> dict[str, Any]:
        if pieces:
            await anyio.sleep(0)
            piece = pieces.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(pieces)}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1234), "server": ("gateway", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    return sent
