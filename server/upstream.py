"""Talking to the replicas: timeouts, retries, SSE passthrough, cancellation.

- Retry: a request moves to another replica only when the connection fails (cannot connect,
  connection reset, the replica died) before any byte went to the client. For a stream the
  gateway holds the response until the first upstream chunk has arrived, so a replica that dies
  before its first token is retried too. Timeouts are not retried (the replica is slow, not dead).
- Repair: stock vLLM (0.32) can answer the next request carrying the same image with a 500
  after a rejected multimodal request ("Multi-modal cache miss ... P0/P1 cache drift"); the
  failure clears the drift. So a request with media whose replica answers 5xx (for a stream: an
  error event before the first token) is sent once more, still before any byte reached the client.
- Timeouts: connect and read (silence between bytes) per attempt, and one deadline for the whole
  request, streaming included (`Settings.*_timeout_s`).
- A stream that breaks after bytes went out ends with an SSE error event and `data: [DONE]`.
- Cancellation: handlers run under `until_disconnect`, and `ProxyStreamResponse` watches the
  client too; when the client goes away the upstream request is cancelled and its connection
  closed, which makes vLLM abort the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from server import jsonio
from server.config import Settings
from server.errors import (
    ClientDisconnectedError,
    GatewayError,
    NoReplicaError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from server.metrics import GatewayMetrics
from server.routing import Replica, ReplicaPool
from server.transport import ReplicaResponse, ReplicaTransport, Timeouts

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Failures before any byte reached the client: the request moves to another replica. A replica
# that cannot be connected to is ejected; a connection that broke later (possibly a stale
# keep-alive connection) only makes the gateway prefer another replica for this request.
_CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout)
_RETRYABLE_FAILURES = (*_CONNECT_FAILURES, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
DONE_EVENT = b"data: [DONE]"
_MAX_ERROR_TEXT = 500
# Rewrites one SSE event (without its blank-line terminator); None drops it.
EventTransform = Callable[[bytes], bytes | None]


@dataclass(frozen=True)
class UpstreamCall:
    method: str
    path: str
    body: bytes | None
    stream: bool
    request_id: str
    repairable: bool = False  # carries media: one retry on a server error (see module docstring)


@dataclass
class Opened:
    """A replica's answer: its status, plus the whole body or (streams) the chunks up to the first event."""

    replica: Replica
    response: ReplicaResponse
    head: bytes
    chunks: AsyncIterator[bytes] | None
    pool: ReplicaPool
    server_failed: bool = False  # 5xx, or a stream whose first real event is a server error
    closed: bool = False

    async def close(self) -> None:
        """Close the upstream response and free the replica's queue slot (idempotent, shielded)."""
        if self.closed:
            return
        self.closed = True
        self.pool.release(self.replica)
        if self.chunks is None:  # the body was read whole: closing only returns the connection
            await self.response.aclose()
            return
        with anyio.CancelScope(shield=True):
            await self.chunks.aclose()  # type: ignore[attr-defined]
            await self.response.aclose()

    @property
    def status(self) -> int:
        return self.response.status


class Upstream:
    """Requests to the replicas, straight on the transport: the gateway needs none of
    `httpx.AsyncClient`'s layers (cookies, redirects, auth flows, URL merging) on its hot path."""

    def __init__(
        self,
        transport: ReplicaTransport,
        timeouts: Timeouts,
        pool: ReplicaPool,
        settings: Settings,
        metrics: GatewayMetrics,
    ) -> None:
        self.transport = transport
        self.timeouts = timeouts
        self.pool = pool
        self.metrics = metrics
        self.max_attempts = settings.max_attempts
        self.request_timeout_s = settings.request_timeout_s
        key = settings.upstream_api_key
        self._auth = {"authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    def deadline(self) -> float:
        """When the whole request must be done, on the event loop's clock (`asyncio.timeout_at`)."""
        return asyncio.get_running_loop().time() + self.request_timeout_s

    async def open(self, call: UpstreamCall, deadline: float) -> Opened:
        """Send `call` to a replica: move on after connection failures, repair once after a 5xx."""
        tried: list[Replica] = []
        failure: Exception | None = None
        repair = call.repairable
        for attempt in range(self.max_attempts):
            replica = self._acquire(tried, failure)
            try:
                opened = await self._attempt(replica, call, deadline)
            except _RETRYABLE_FAILURES as exc:
                self.pool.release(replica)
                if isinstance(exc, _CONNECT_FAILURES):
                    self.pool.mark_down(replica, f"{type(exc).__name__} on {call.path}")
                tried.append(replica)
                failure = exc
                self.metrics.connection_failures.inc()
                continue
            except BaseException:
                self.pool.release(replica)
                raise
            if not (repair and opened.server_failed and attempt + 1 < self.max_attempts):
                return opened
            await opened.close()
            repair = False
            self.metrics.repairs.inc()
            logger.warning("replica %s failed a multimodal request; sending it once more", replica.url)
        raise UpstreamError(f"{len(tried)} replica(s) failed ({type(failure).__name__}); giving up")

    async def get(self, path: str, request_id: str) -> bytes:
        """Body of a GET that must answer 200 (e.g. /v1/models)."""
        opened = await self.open(UpstreamCall("GET", path, None, False, request_id), self.deadline())
        await opened.close()
        if opened.status != 200:
            raise status_error(opened.status, opened.head)
        return opened.head

    def _acquire(self, tried: list[Replica], failure: Exception | None) -> Replica:
        """A replica not tried yet; after a failure, a tried one that is still in rotation."""
        try:
            return self.pool.acquire(exclude=tried)
        except NoReplicaError:
            if failure is None:
                raise
        try:
            return self.pool.acquire()
        except NoReplicaError:
            raise UpstreamError(f"{len(tried)} replica(s) failed ({type(failure).__name__})") from None

    async def _attempt(self, replica: Replica, call: UpstreamCall, deadline: float) -> Opened:
        headers = {"accept-encoding": "identity", "x-request-id": call.request_id, **self._auth}
        if call.body is not None:
            headers["content-type"] = "application/json"
        url = replica.url + call.path
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.transport.send(call.method, url, headers, call.body, self.timeouts)
                return await self._read_head(replica, call, response)
        except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
            raise UpstreamTimeoutError("the replica did not answer in time") from None

    async def _read_head(self, replica: Replica, call: UpstreamCall, response: ReplicaResponse) -> Opened:
        try:
            if call.stream and response.status == 200:
                chunks = response.chunks()
                head, failed = await _read_stream_head(chunks)
                return Opened(replica, response, head, chunks, self.pool, server_failed=failed)
            body = await response.read()
            return Opened(replica, response, body, None, self.pool, server_failed=response.status >= 500)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await response.aclose()
            raise

    async def relay(self, opened: Opened, transform: EventTransform, deadline: float) -> AsyncIterator[bytes]:
        """The SSE stream of `opened`, rewritten event by event; always ends with `[DONE]`."""
        parser = SSEParser()
        chunk: bytes | None = opened.head
        try:
            while chunk is not None:
                out, done = _transform_events(parser.feed(chunk), transform)
                if out:
                    yield out
                if done:
                    return
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(opened.chunks, None) if opened.chunks else None
            yield error_event(UpstreamError("the replica ended the stream early"))
        except (TimeoutError, httpx.TimeoutException):
            yield error_event(UpstreamTimeoutError("the replica stopped answering in time"))
        except httpx.HTTPError as exc:
            self.pool.mark_down(opened.replica, f"{type(exc).__name__} during a stream")
            yield error_event(UpstreamError(f"the replica failed mid-stream ({type(exc).__name__})"))


class SSEParser:
    """Splits a byte stream into SSE events (blank-line separated; CRLF treated as LF)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer = (self._buffer + chunk).replace(b"\r\n", b"\n")
        *events, self._buffer = self._buffer.split(b"\n\n")
        return [event for event in events if event.strip()]


async def _read_stream_head(chunks: AsyncIterator[bytes]) -> tuple[bytes, bool]:
    """Chunks up to the first event past vLLM's role preamble; whether that event is a server error.

    vLLM sends `{"delta": {"role": "assistant", "content": ""}}` first, then tokens, or an error
    event when the request fails; nothing of it reaches the client before this returns.
    """
    parser = SSEParser()
    head = b""
    async for chunk in chunks:
        head += chunk
        for event in parser.feed(chunk):
            if not _is_preamble(event):
                return head, _is_server_error(event)
    return head, False


def _event_json(event: bytes) -> Any:
    try:
        return jsonio.loads(event.removeprefix(b"data:"))
    except (ValueError, RecursionError):
        return None


def _is_preamble(event: bytes) -> bool:
    """An SSE comment, or a chunk whose deltas only announce the role (no content, no finish)."""
    if not event.startswith(b"data:"):
        return True
    data = _event_json(event)
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices, list) or "error" in data:
        return False
    return all(
        isinstance(c, dict) and c.get("finish_reason") is None and isinstance(c.get("delta"), dict)
        and set(c["delta"]) <= {"role", "content"} and not c["delta"].get("content")
        for c in choices
    )  # fmt: skip


def _is_server_error(event: bytes) -> bool:
    data = _event_json(event)
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return False
    code = str(error.get("code", ""))
    return (code.isdigit() and int(code) >= 500) or error.get("type") == "InternalServerError"


def _transform_events(events: list[bytes], transform: EventTransform) -> tuple[bytes, bool]:
    """(bytes to send, whether `[DONE]` was among the events); events after `[DONE]` are dropped."""
    out = []
    for event in events:
        if event.strip() == DONE_EVENT:
            out.append(DONE_EVENT + b"\n\n")
            return b"".join(out), True
        rewritten = transform(event)
        if rewritten is not None:
            out.append(rewritten + b"\n\n")
    return b"".join(out), False


def error_event(error: GatewayError) -> bytes:
    """An SSE error event followed by `[DONE]`, for streams that already started."""
    return b"data: " + json.dumps(error.body()).encode() + b"\n\n" + DONE_EVENT + b"\n\n"


def status_error(status: int, body: bytes) -> GatewayError:
    """The error to return for a replica's non-2xx answer (4xx passed through, 5xx as 502)."""
    error = _error_object(body)
    message = str(error.get("message") or f"the replica answered HTTP {status}")[:_MAX_ERROR_TEXT]
    if 400 <= status < 500:
        error_type = error.get("type") if isinstance(error.get("type"), str) else "invalid_request_error"
        param = error.get("param") if isinstance(error.get("param"), str) else None
        code = error.get("code")
        return UpstreamStatusError(
            status, message, error_type=error_type, param=param, code=None if code is None else str(code)
        )
    return UpstreamError(f"the replica answered HTTP {status}: {message}")


def _error_object(body: bytes) -> dict[str, Any]:
    """The error object of vLLM/OpenAI error JSON (`{"error": {...}}` or flat), else {}."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return {"message": body[:_MAX_ERROR_TEXT].decode("utf-8", "replace").strip()} if body else {}
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return payload["error"]
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return {"message": payload["error"]}
    return payload if isinstance(payload, dict) else {}


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def until_disconnect(receive: Receive, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work`, cancelling it if the client disconnects (then ClientDisconnectedError).

    The watcher reads `receive` until the disconnect: read the request body before calling this.
    Plain asyncio (one watcher task that cancels this one), not an anyio task group: this runs
    once per request, and a task group costs several times more.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()  # delivered at `work`'s current await

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        result = await work()
    except asyncio.CancelledError:
        if not gone:
            raise
    finally:
        watcher.cancel()
        if gone:
            task.uncancel()  # the watcher's one cancel() was this disconnect, not the server's
    if gone:
        raise ClientDisconnectedError("the client disconnected")
    return result


class ProxyStreamResponse(StreamingResponse):
    """An SSE response that stops (and runs `on_close`) as soon as the client disconnects."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]) -> None:
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
                with contextlib.suppress(OSError):  # the server reports a vanished client on send
                    await self.stream_response(send)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
                await self.on_close()
