"""ASGI middleware for vLLM's OpenAI server: adds `usage.aim` and AIM metrics.

Enabled by `aim-vllm engine` (vLLM's `--middleware aim_vllm.usage_middleware.AimUsageMiddleware`).
For `POST /v1/chat/completions` it finds the worker's stats for the response `id`
(`usage.StatsStore`) and puts them under `usage.aim`: in the JSON body, or in the SSE chunk
that carries `usage` (`stream_options.include_usage`). Other routes pass through untouched.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import Counter, Histogram

from aim_vllm.usage import StatsStore

_ROUTES = {"/v1/chat/completions"}

REQUESTS = Counter("aim_vllm_requests_total", "Requests with visual tokens, by pruning outcome", ["pruning"])
VISUAL_TOKENS = Counter("aim_vllm_visual_tokens_total", "Visual tokens", ["stage"])  # in / merged
PREFILL_ROWS = Counter("aim_vllm_prefill_rows_total", "Decoder rows computed in prefill", ["kind"])
FLOPS_RATIO = Histogram(
    "aim_vllm_flops_ratio",
    "Executed LLM prefill FLOPs relative to AIM off",
    buckets=(0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
)


def record_metrics(stats: dict[str, Any]) -> None:
    """Aggregate one request's stats into the Prometheus metrics."""
    REQUESTS.labels(pruning=stats["pruning"].split(":")[0]).inc()
    VISUAL_TOKENS.labels(stage="in").inc(stats["visual_tokens_in"])
    VISUAL_TOKENS.labels(stage="merged").inc(stats["visual_tokens_merged"])
    layers = len(stats["rows_per_layer"])
    PREFILL_ROWS.labels(kind="computed").inc(sum(stats["rows_per_layer"]))
    PREFILL_ROWS.labels(kind="off").inc(layers * (stats["text_tokens"] + stats["visual_tokens_in"]))
    FLOPS_RATIO.observe(stats["flops_ratio"])


def add_aim_usage(payload: dict[str, Any], store: StatsStore) -> bool:
    """Put the stats of `payload["id"]` into `payload["usage"]["aim"]`; True if changed."""
    usage = payload.get("usage")
    if not isinstance(usage, dict) or "id" not in payload:
        return False
    stats = store.pop(str(payload["id"]))
    if stats is None:
        return False
    record_metrics(stats)
    usage["aim"] = stats
    return True


class AimUsageMiddleware:
    """Pure ASGI middleware (works with streaming responses)."""

    def __init__(self, app) -> None:
        self.app = app
        self.store = StatsStore.from_env()

    async def __call__(self, scope, receive, send) -> None:
        if self.store is None or scope.get("type") != "http" or scope.get("path") not in _ROUTES:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _Rewriter(send, self.store).send)


class _Rewriter:
    """Rewrites one response: buffers JSON bodies, edits SSE events as they pass."""

    def __init__(self, send, store: StatsStore) -> None:
        self._send, self._store = send, store
        self._start: dict | None = None
        self._json = False
        self._body = bytearray()
        self._pending = b""

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            content_type = headers.get(b"content-type", b"")
            self._json = content_type.startswith(b"application/json")
            if self._json:
                self._start = message  # sent with the final body (content-length changes)
                return
            await self._send(message)
            return
        if message["type"] != "http.response.body":
            await self._send(message)
            return
        if self._json:
            await self._send_json(message)
        else:
            await self._send_sse(message)

    async def _send_json(self, message: dict) -> None:
        self._body += message.get("body", b"")
        if message.get("more_body", False):
            return
        body = bytes(self._body)
        try:
            payload = json.loads(body)
            if isinstance(payload, dict) and add_aim_usage(payload, self._store):
                body = json.dumps(payload).encode()
        except ValueError:
            pass
        assert self._start is not None
        headers = [(k, v) for k, v in self._start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_sse(self, message: dict) -> None:
        data = self._pending + message.get("body", b"")
        *events, self._pending = data.split(b"\n\n")
        if not message.get("more_body", False) and self._pending:
            events.append(self._pending)
            self._pending = b""
        out = b"".join(self._rewrite_event(event) + b"\n\n" for event in events)
        await self._send({**message, "body": out})

    def _rewrite_event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: {") or b'"usage"' not in event:
            return event
        try:
            payload = json.loads(event[len(b"data: ") :])
        except ValueError:
            return event
        if isinstance(payload, dict) and add_aim_usage(payload, self._store):
            return b"data: " + json.dumps(payload).encode()
        return event
