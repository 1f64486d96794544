"""Streaming requests as `aim-vllm bench` times them: TTFT from the first token chunk, TPOT, phases."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from bench.client import RequestResult, StreamTally, run_phase, run_split, stream_chat


def _sse(*payloads: dict) -> list[str]:
    return [f"data: {json.dumps(p)}" for p in payloads] + ["data: [DONE]"]


ROLE = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
EMPTY_TOKEN = {"choices": [{"index": 0, "delta": {}, "token_ids": [7]}]}
TEXT = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3, "aim": {"flops_ratio": 0.2}}}


def test_tally_first_token_skips_role_chunk() -> None:
    """The role chunk is not a token; a token whose text is empty still is (token_ids)."""
    tally = StreamTally(started=10.0)
    for now, line in zip([10.5, 11.0, 11.5, 12.0, 12.0], _sse(ROLE, EMPTY_TOKEN, TEXT, USAGE), strict=True):
        tally.feed(line, now)
    result = tally.result(ended=12.5)
    assert result.ok and tally.done
    assert result.ttft_s == pytest.approx(1.0) and result.e2e_s == pytest.approx(2.5)
    assert (result.prompt_tokens, result.output_tokens) == (12, 3)
    assert result.aim == {"flops_ratio": 0.2}
    assert result.tpot_s == pytest.approx((2.5 - 1.0) / 2)


def test_tally_ignores_comments_and_blank_lines() -> None:
    tally = StreamTally(started=0.0)
    for line in ["", ": keep-alive", *_sse(TEXT)]:
        tally.feed(line, 1.0)
    assert tally.result(2.0).ttft_s == 1.0


def test_tally_without_tokens_is_an_error() -> None:
    tally = StreamTally(started=0.0)
    for line in _sse(ROLE, USAGE):
        tally.feed(line, 1.0)
    result = tally.result(2.0)
    assert not result.ok and "no token" in result.error and result.tpot_s is None


def test_tpot_needs_two_tokens() -> None:
    assert RequestResult(ttft_s=1.0, e2e_s=1.0, output_tokens=1).tpot_s is None


def _streaming_transport(delay_s: float = 0.0, state: dict | None = None) -> httpx.MockTransport:
    state = state if state is not None else {}

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("fail"):
            return httpx.Response(400, json={"error": {"message": "bad level"}})
        state["in_flight"] = state.get("in_flight", 0) + 1
        state["peak"] = max(state.get("peak", 0), state["in_flight"])
        await asyncio.sleep(delay_s)
        state["in_flight"] -= 1
        text = "\n\n".join(_sse(ROLE, TEXT, TEXT, USAGE)) + "\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


async def test_stream_chat_success_and_http_error() -> None:
    """A 400 comes back as an error result (the phase goes on), not as an exception."""
    async with httpx.AsyncClient(transport=_streaming_transport()) as client:
        good = await stream_chat(client, "http://engine", {"stream": True})
        bad = await stream_chat(client, "http://engine", {"fail": True})
    assert good.ok and good.output_tokens == 3
    assert not bad.ok and bad.error.startswith("HTTP 400") and "bad level" in bad.error


async def test_stream_chat_connection_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        result = await stream_chat(client, "http://engine", {})
    assert not result.ok and result.error.startswith("ConnectError")


async def test_run_phase_respects_concurrency() -> None:
    """Closed loop: never more than `concurrency` requests in flight, every body sent once."""
    state: dict = {}
    done: list[RequestResult] = []
    async with httpx.AsyncClient(transport=_streaming_transport(0.01, state)) as client:
        phase = await run_phase(client, "http://engine", [{"i": i} for i in range(10)], 3, done.append)
    assert len(phase.results) == len(done) == 10 and all(r.ok for r in phase.results)
    assert state["peak"] == 3 and phase.wall_s > 0


async def test_run_split_sends_each_body_twice() -> None:
    """Fresh as given, then the repeat with a prefix-cache salt of its own (the LLM part is timed
    on a computed prompt, not a cache hit); the caller's bodies are left as they were."""
    sent: list[dict] = []
    transport = _streaming_transport()

    async def record(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return await transport.handle_async_request(request)

    bodies = [{"i": 0}, {"i": 1}]
    async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as client:
        pairs = await run_split(client, "http://engine", bodies)
    assert len(pairs) == 2 and all(fresh.ok and repeat.ok for fresh, repeat in pairs)
    assert [body["i"] for body in sent] == [0, 0, 1, 1] and bodies == [{"i": 0}, {"i": 1}]
    salts = [body.get("cache_salt") for body in sent]
    assert salts[0] is None and salts[2] is None
    assert salts[1] and salts[3] and salts[1] != salts[3]
