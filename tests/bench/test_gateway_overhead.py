"""`bench/gateway_overhead.py` pieces: the ratios it reports, the trivial upstream, the null relay."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from bench import gateway_overhead, null_relay, trivial_upstream
from server.config import Settings


def _samples(latency_ms: float, count: int, wall_s: float) -> gateway_overhead.Samples:
    return gateway_overhead.Samples(latencies=[latency_ms / 1000] * count, wall_s=wall_s)


def test_ratios_against_direct_and_the_null_relay() -> None:
    rows = gateway_overhead.summarise(
        {"direct": _samples(8, 100, 1.0), "gateway": _samples(10, 100, 1.25), "relay": _samples(10, 100, 1.2)}
    )
    assert rows["ratio"]["requests_per_s"] == pytest.approx(0.8)
    assert rows["relay_ratio"]["requests_per_s"] == pytest.approx(1 / 1.2)
    assert rows["gateway_vs_relay"]["requests_per_s"] == pytest.approx(1.2 / 1.25)
    assert rows["added_ms"]["p50_ms"] == pytest.approx(2.0)
    table = gateway_overhead.markdown({"workloads": {"text": rows}})
    assert "| text | gateway/relay |" in table and "| text | relay/direct |" in table
    without = gateway_overhead.summarise({"direct": _samples(8, 10, 1.0), "gateway": _samples(9, 10, 1.0)})
    assert "relay_ratio" not in without and "gateway/relay" not in gateway_overhead.markdown(
        {"workloads": {"text": without}}
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _through_relay() -> list[httpx.Response]:
    upstream_port, relay_port = _free_port(), _free_port()
    servers = [
        asyncio.create_task(trivial_upstream.serve("127.0.0.1", upstream_port)),
        asyncio.create_task(null_relay.serve(relay_port, f"http://127.0.0.1:{upstream_port}")),
    ]
    await asyncio.sleep(0.2)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay_port}", trust_env=False) as client:
            return [
                await client.post("/v1/chat/completions", json={"model": "trivial", "messages": []}),
                await client.get("/v1/models"),  # the same keep-alive connection
                await client.get("/nowhere"),
            ]
    finally:
        for server in servers:
            server.cancel()


def test_trivial_upstream_answers_through_the_null_relay() -> None:
    chat, models, missing = asyncio.run(_through_relay())
    assert chat.status_code == 200 and chat.json()["usage"]["aim"]["flops_ratio"] == 1.0
    assert models.json()["data"][0]["id"] == trivial_upstream.MODEL
    assert missing.status_code == 404


def test_ratios_against_the_starlette_baseline() -> None:
    """`--starlette` adds the rows that say what FastAPI costs against the bare Starlette app."""
    rows = gateway_overhead.summarise(
        {
            "direct": _samples(8, 100, 1.0),
            "gateway": _samples(9, 100, 1.1),
            "starlette": _samples(8.5, 100, 1.05),
        }
    )
    assert rows["starlette_ratio"]["requests_per_s"] == pytest.approx(1 / 1.05)
    assert rows["gateway_vs_starlette"]["requests_per_s"] == pytest.approx(1.05 / 1.1)
    assert "| text | gateway/starlette |" in gateway_overhead.markdown({"workloads": {"text": rows}})


async def _chat_through_starlette() -> httpx.Response:
    port = _free_port()
    upstream = asyncio.create_task(trivial_upstream.serve("127.0.0.1", port))
    await asyncio.sleep(0.2)
    app = gateway_overhead.starlette_app(Settings(upstreams=[f"http://127.0.0.1:{port}"]))
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                body = gateway_overhead.chat_body(trivial_upstream.MODEL, 4, None)
                return await client.post("/v1/chat/completions", json=body, headers={"X-AIM-Level": "max"})
    finally:
        upstream.cancel()


def test_starlette_baseline_serves_chat_like_the_gateway() -> None:
    """The baseline must do the gateway's work (level, usage.aim), or the comparison flatters FastAPI."""
    chat = asyncio.run(_chat_through_starlette())
    assert chat.status_code == 200, chat.text
    aim = chat.json()["usage"]["aim"]
    assert aim["level"] == "max" and aim["flops_ratio"] == 1.0
