"""Ordinary serving traffic, the kind that never asks for AIM, timed the way its users feel it.

Three workloads for `aim-vllm bench --plugin-overhead` (issue #27), each run against one engine:
- `text_decode`: `requests` text chats of `max_tokens` tokens each, `concurrency` in flight:
  time per output token (p50) and requests/s (vLLM's compiled decode is what shows here);
- `second_turn`: an image chat, then its second turn (the first turn's messages, its answer and a
  new question): both TTFTs (prefix caching is what shows here: the second turn's prompt starts
  with the whole first one);
- `decode_stall`: `streams` decode streams running, then a long text prompt arrives: the longest
  gap between two tokens of any stream while it is prefilled, and the streams' median gap before
  it came (chunked prefill is what shows here: a prompt prefilled in one step stalls every
  stream for that whole step).
Requests go to the engine directly; `extra` (e.g. `{"mm_processor_kwargs": {"aim_preset": "off"}}`)
is added to every body.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.client import CHAT_PATH

LONG_PROMPT_TOKENS = 3200  # the long prompt of `decode_stall`: over vLLM's 2048-token chunk on a CPU


@dataclass
class Stream:
    """Arrival times (perf_counter s) of every chunk that carried a token, and the usage."""

    sent: float
    token_times: list[float] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    @property
    def ttft_s(self) -> float:
        return self.token_times[0] - self.sent


async def stream(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    decoding: asyncio.Event | None = None,
    after: int = 1,
) -> Stream:
    """One streamed chat completion; RuntimeError on a non-200 answer or a stream without tokens.
    `decoding` is set once `after` tokens have arrived."""
    record = Stream(time.perf_counter())
    async with client.stream("POST", url + CHAT_PATH, json={**body, "stream": True}) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise RuntimeError(f"HTTP {response.status_code}: {text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            payload = json.loads(line[len("data:") :])
            for choice in payload.get("choices") or []:
                content = (choice.get("delta") or {}).get("content") or ""
                if content or choice.get("token_ids"):
                    record.token_times.append(time.perf_counter())
                    record.text += content
                    if decoding is not None and len(record.token_times) >= after:
                        decoding.set()
            if isinstance(payload.get("usage"), dict):
                record.usage = payload["usage"]
    if not record.token_times:
        raise RuntimeError("the stream carried no token")
    return record


def text_body(model: str, text: str, max_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
        **extra,
    }


def long_text(words: int, seed: int) -> str:
    """A prompt of `words` distinct-looking words (a fresh one per seed: nothing cached)."""
    return " ".join(f"w{seed}x{i * 7919 % 10007}" for i in range(words))


async def text_of_tokens(client: httpx.AsyncClient, url: str, model: str, tokens: int, seed: int) -> str:
    """A `long_text` of about `tokens` tokens of the engine's tokenizer (vLLM's /tokenize)."""
    words = tokens
    for _ in range(3):  # tokens per word differ between tokenizers: scale twice, then trust it
        text = long_text(words, seed)
        response = await client.post(url + "/tokenize", json={"model": model, "prompt": text})
        response.raise_for_status()
        count = response.json()["count"]
        if abs(count - tokens) <= tokens // 50:
            break
        words = max(1, round(words * tokens / count))
    return text


async def text_decode(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    extra: dict[str, Any],
    seed: int,
    requests: int = 8,
    concurrency: int = 4,
    max_tokens: int = 64,
) -> dict[str, Any]:
    """TPOT p50 and requests/s of short text chats decoding `max_tokens` tokens each."""
    bodies = iter(
        text_body(model, f"Request {seed}-{i}: tell a long story.", max_tokens, extra)
        for i in range(requests)
    )
    done: list[Stream] = []

    async def worker() -> None:
        for body in bodies:
            done.append(await stream(client, url, body))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    tpots = [(s.token_times[-1] - s.token_times[0]) / (len(s.token_times) - 1) for s in done]
    return {"tpot_p50_s": statistics.median(tpots), "requests_per_s": requests / wall}


async def second_turn(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    extra: dict[str, Any],
    image: dict[str, Any],
    max_tokens: int = 8,
) -> dict[str, Any]:
    """TTFT of an image chat's first and second turn (same image, the first turn's answer)."""
    question = {"role": "user", "content": [image, {"type": "text", "text": "Describe this image."}]}
    first = await stream(client, url, {**_chat(model, [question], max_tokens), **extra})
    history = [question, {"role": "assistant", "content": first.text}]
    follow = {"role": "user", "content": "What colour is its top left corner?"}
    second = await stream(client, url, {**_chat(model, [*history, follow], max_tokens), **extra})
    return {
        "first_ttft_s": first.ttft_s,
        "second_ttft_s": second.ttft_s,
        "prompt_tokens": second.usage.get("prompt_tokens"),
    }


async def decode_stall(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    extra: dict[str, Any],
    seed: int,
    streams: int = 3,
    tokens: int = LONG_PROMPT_TOKENS,
    max_tokens: int = 256,
) -> dict[str, Any]:
    """The streams' longest gap between two tokens while a long prompt is prefilled."""
    long_prompt = await text_of_tokens(client, url, model, tokens, seed)
    bodies = [
        text_body(model, f"Stream {seed}-{i}: count slowly.", max_tokens, extra) for i in range(streams)
    ]
    decoding = [asyncio.Event() for _ in bodies]
    running = [
        asyncio.create_task(stream(client, url, body, event, after=4))
        for body, event in zip(bodies, decoding, strict=True)
    ]
    try:
        await asyncio.gather(*(event.wait() for event in decoding))  # a few decode steps in each
        arrived = time.perf_counter()
        long = await stream(client, url, text_body(model, long_prompt, 1, extra))
    except BaseException:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise
    prefilled = long.token_times[0]
    results = await asyncio.gather(*running)
    gaps, before = [], []
    for result in results:
        pairs = list(itertools.pairwise(result.token_times))
        gaps += [b - a for a, b in pairs if b > arrived and a < prefilled]
        before += [b - a for a, b in pairs if b <= arrived]
    if not gaps:
        raise RuntimeError("the decode streams ended before the long prompt was prefilled: raise max_tokens")
    return {
        "longest_gap_s": max(gaps),
        "gap_before_p50_s": statistics.median(before) if before else None,
        "long_prompt_tokens": long.usage.get("prompt_tokens"),
        "long_ttft_s": long.ttft_s,
    }


def _chat(model: str, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }


async def run_all(
    client: httpx.AsyncClient, url: str, model: str, extra: dict[str, Any], image: dict[str, Any], seed: int
) -> dict[str, Any]:
    """The three workloads, one after another, on one engine: their figures in one dict."""
    return {
        **await text_decode(client, url, model, extra, seed),
        **await second_turn(client, url, model, extra, image),
        **await decode_stall(client, url, model, extra, seed),
    }


# figure -> (what it is, whether lower is better)
FIGURES = {
    "startup_s": ("start-up until /health answers, s", True),
    "tpot_p50_s": ("text decode, c=4: TPOT p50, s", True),
    "requests_per_s": ("text decode, c=4: requests/s", False),
    "first_ttft_s": ("image chat, first turn: TTFT, s", True),
    "second_ttft_s": ("image chat, second turn: TTFT, s", True),
    "longest_gap_s": ("decode streams during a long prefill: longest gap, s", True),
    "gap_before_p50_s": ("decode streams before it: gap p50, s", True),
}


def summarise(per_engine: dict[str, list[dict[str, Any]]], reference: str) -> list[dict[str, Any]]:
    """Per figure: each engine's median over rounds, and the other engines' ratio to `reference`."""
    rows = []
    for name, (label, lower_is_better) in FIGURES.items():
        medians = {}
        for engine, rounds in per_engine.items():
            values = [r[name] for r in rounds if r.get(name) is not None]
            medians[engine] = statistics.median(values) if values else None
        base = medians.get(reference)
        ratios = {
            engine: (value / base if value is not None and base else None)
            for engine, value in medians.items()
            if engine != reference
        }
        rows.append(
            {"figure": name, "label": label, "lower_is_better": lower_is_better, **medians, "ratio": ratios}
        )
    return rows
