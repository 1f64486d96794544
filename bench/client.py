"""Streaming chat requests and phases of them, timed as the client sees them.

Per request: TTFT is the time from sending to the first chunk that carries a generated token
(text, or token ids: `chat_body` asks for `return_token_ids`, so a token whose text is empty still
arrives); end-to-end latency runs to the end of the stream; TPOT is (end-to-end - TTFT) divided
by the tokens after the first. Token counts and `usage.aim` come from the final usage chunk.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

CHAT_PATH = "/v1/chat/completions"
REPEAT_SALT = f"aim-bench-repeat-{uuid.uuid4().hex}"  # new to the engine's prefix cache in every run
_ERROR_CHARS = 300


@dataclass
class RequestResult:
    """What one request cost; `error` is set (and the timings are unusable) when it failed."""

    ttft_s: float | None = None
    e2e_s: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    aim: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.ttft_s is not None

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (None with fewer than two tokens)."""
        if not self.ok or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


class StreamTally:
    """Reads the SSE lines of one streamed chat completion, noting when the first token came."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_token_at: float | None = None
        self.usage: dict[str, Any] = {}
        self.done = False

    def feed(self, line: str, now: float) -> None:
        """One line of the event stream, received at `now` (perf_counter seconds)."""
        if not line.startswith("data:"):
            return
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            self.done = True
            return
        payload = json.loads(data)
        if self.first_token_at is None and any(_has_token(c) for c in payload.get("choices") or []):
            self.first_token_at = now
        if isinstance(payload.get("usage"), dict):
            self.usage = payload["usage"]

    def result(self, ended: float) -> RequestResult:
        if self.first_token_at is None:
            return RequestResult(e2e_s=ended - self.started, error="the stream carried no token")
        return RequestResult(
            ttft_s=self.first_token_at - self.started,
            e2e_s=ended - self.started,
            output_tokens=int(self.usage.get("completion_tokens", 0)),
            prompt_tokens=int(self.usage.get("prompt_tokens", 0)),
            aim=dict(self.usage.get("aim") or {}),
        )


def _has_token(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta") or {}
    return bool(delta.get("content") or choice.get("token_ids"))


async def stream_chat(client: httpx.AsyncClient, base_url: str, body: dict[str, Any]) -> RequestResult:
    """Send one streaming chat request and time it; failures come back as `error`, never raised."""
    started = time.perf_counter()
    tally = StreamTally(started)
    try:
        async with client.stream("POST", base_url + CHAT_PATH, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                elapsed = time.perf_counter() - started
                return RequestResult(
                    e2e_s=elapsed, error=f"HTTP {response.status_code}: {text[:_ERROR_CHARS]}"
                )
            async for line in response.aiter_lines():
                tally.feed(line, time.perf_counter())
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return RequestResult(e2e_s=time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    return tally.result(time.perf_counter())


@dataclass
class PhaseResult:
    """The requests of one phase and its wall time (first send to last answer)."""

    results: list[RequestResult]
    wall_s: float


async def run_phase(
    client: httpx.AsyncClient,
    base_url: str,
    bodies: list[dict[str, Any]],
    concurrency: int,
    on_done: Callable[[RequestResult], None] = lambda result: None,
) -> PhaseResult:
    """Send `bodies` with at most `concurrency` requests in flight (closed loop)."""
    pending = iter(bodies)
    results: list[RequestResult] = []

    async def worker() -> None:
        for body in pending:
            result = await stream_chat(client, base_url, body)
            results.append(result)
            on_done(result)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(bodies)))))
    return PhaseResult(results, time.perf_counter() - started)


async def run_split(
    client: httpx.AsyncClient,
    base_url: str,
    bodies: list[dict[str, Any]],
    on_done: Callable[[RequestResult], None] = lambda result: None,
) -> list[tuple[RequestResult, RequestResult]]:
    """Each body twice in a row at concurrency 1: (fresh, repeat). The repeat reuses the encoder's
    output (vLLM's encoder cache keys on the media) but not the fresh request's KV: its `cache_salt`
    (vLLM's per-request prefix-cache salt) is new, so it computes the whole prompt in the LLM."""
    pairs = []
    for number, body in enumerate(bodies):
        fresh = await stream_chat(client, base_url, body)
        on_done(fresh)
        repeat = await stream_chat(client, base_url, {**body, "cache_salt": f"{REPEAT_SALT}-{number}"})
        on_done(repeat)
        pairs.append((fresh, repeat))
    return pairs


def new_client(max_connections: int) -> httpx.AsyncClient:
    """A client for long CPU prefills: no read timeout worth mentioning, no proxies from the env."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(timeout=httpx.Timeout(7200.0, connect=30.0), limits=limits, trust_env=False)
