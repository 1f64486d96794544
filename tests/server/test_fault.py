"""Fault tolerance: a replica dies while 50 streams are in flight."""

from __future__ import annotations

import json

import anyio
import httpx

from tests.server.fakes import FakeCluster, chat_body, running_gateway, sse_events

CHAT = "/v1/chat/completions"
STREAMS = 50


async def _run_streams(client: httpx.AsyncClient, results: list[httpx.Response]) -> None:
    async def one() -> None:
        results.append(await client.post(CHAT, json=chat_body(stream=True, max_tokens=4)))

    async with anyio.create_task_group() as group:
        for _ in range(STREAMS):
            group.start_soon(one)


def _outcome(response: httpx.Response) -> str:
    """'ok' for a complete answer, 'error' for a clean error ending; anything else fails the test."""
    events = sse_events(response.content)
    assert response.status_code == 200
    assert events[-1] == "[DONE]", events
    payloads = [json.loads(event) for event in events[:-1]]
    if "error" in payloads[-1]:
        return "error"
    assert (
        "".join(p["choices"][0]["delta"].get("content", "") for p in payloads if p.get("choices")) == "Hello!"
    )
    return "ok"


async def test_replica_killed_mid_stream_during_50_streams() -> None:
    """Streams on the dead replica end with an error event and [DONE], none hangs; new work goes elsewhere."""
    cluster = FakeCluster("a", "b")
    dead, live = cluster["a"], cluster["b"]
    for replica in (dead, live):
        replica.gate = anyio.Event()  # every stream waits after its first chunk
    dead.break_streams = anyio.Event()
    results: list[httpx.Response] = []
    async with running_gateway(cluster) as (app, client):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(_run_streams, client, results)
                while dead.streams_started + live.streams_started < STREAMS:
                    await anyio.sleep(0)
                on_dead = dead.streams_started
                dead.down = True  # the kill: open streams break, new connections are refused
                dead.break_streams.set()
                dead.gate.set()
                live.gate.set()
        after = [await client.post(CHAT, json=chat_body(stream=stream)) for stream in (False, True) * 5]
        pool = app.state.gateway.pool
    outcomes = [_outcome(response) for response in results]
    assert len(outcomes) == STREAMS
    assert 0 < on_dead < STREAMS
    assert outcomes.count("error") == on_dead
    assert outcomes.count("ok") == STREAMS - on_dead
    assert [r.status_code for r in after] == [200] * 10
    assert dead.streams_started == on_dead and len(live.bodies) == STREAMS - on_dead + 10
    assert [r.healthy for r in pool.replicas] == [False, True]
    assert all(r.outstanding == 0 for r in pool.replicas)


async def test_replica_killed_before_first_byte_is_retried_transparently() -> None:
    """Requests that had sent nothing to their client when the replica died are retried on the live one."""
    cluster = FakeCluster("a", "b")
    dead, live = cluster["a"], cluster["b"]
    dead.hold_answers = anyio.Event()  # requests on `a` wait for an answer that never comes
    results: list[httpx.Response] = []
    async with running_gateway(cluster) as (_, client):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(_run_streams, client, results)
                while len(dead.bodies) + live.streams_started < STREAMS:
                    await anyio.sleep(0)
                waiting = len(dead.bodies)
                dead.down = True
                dead.hold_answers.set()
    assert waiting > 0
    assert [_outcome(response) for response in results] == ["ok"] * STREAMS
    assert live.streams_started == STREAMS
