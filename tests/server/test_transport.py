"""The replicas' transport (aiohttp: `send()`, and httpx's interface) against real sockets: bodies,
streams, keep-alive, and each failure as the httpx exception `upstream.py` decides on (retry
elsewhere or not)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from server.transport import AiohttpTransport, Timeouts

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A raw HTTP server on a free port; yields its URL and a list counting its connections."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return await reader.readexactly(length)


def _client(timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AiohttpTransport(), timeout=timeout)


async def test_bodies_both_ways_and_keep_alive() -> None:
    """The request body arrives, the answer comes back whole, and the connection is reused."""
    received: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                received.append(await _read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(
                b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'
            )
            await writer.drain()

    async with _server(answer) as (url, connections), _client() as client:
        for body in (b'{"a":1}', b'{"b":2}'):
            response = await client.post(url + "/v1/chat/completions", content=body)
            assert (response.status_code, response.json()) == (200, {"ok": True})
            assert response.headers["content-type"] == "application/json"
    assert received == [b'{"a":1}', b'{"b":2}'] and len(connections) == 1


async def test_a_chunked_stream_arrives_chunk_by_chunk() -> None:
    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for event in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with (
        _server(stream) as (url, _),
        _client() as client,
        client.stream("POST", url, content=b"{}") as response,
    ):
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert body == b"data: 1\n\ndata: 2\n\n"


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    await asyncio.sleep(5)


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)


async def _short_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial')
    await writer.drain()


FAILURES = [
    (_silent, httpx.ReadTimeout),
    (_hang_up, httpx.RemoteProtocolError),
    (_short_body, httpx.RemoteProtocolError),
]


@pytest.mark.parametrize(("handler", "expected"), FAILURES, ids=["silence", "hang-up", "short-body"])
async def test_failures_are_httpx_errors(handler: Handler, expected: type[Exception]) -> None:
    """A replica that stops answering is a timeout (not retried); one that drops the connection is
    a protocol error (retried before the first byte, an error event after)."""
    async with _server(handler) as (url, _), _client(timeout=0.3) as client:
        with pytest.raises(expected):
            response = await client.post(url, content=b"{}")
            response.read()


FAILURES = [
    (_silent, httpx.ReadTimeout),
    (_hang_up, httpx.RemoteProtocolError),
    (_short_body, httpx.RemoteProtocolError),
]


@pytest.mark.parametrize(("handler", "expected"), FAILURES, ids=["silence", "hang-up", "short-body"])
async def test_send_fails_with_the_same_errors(handler: Handler, expected: type[Exception]) -> None:
    """`send()`, the gateway's own path to the replicas (no httpx objects), fails the same way."""
    transport = AiohttpTransport()
    try:
        async with _server(handler) as (url, _):
            with pytest.raises(expected):
                response = await transport.send("POST", url, {}, b"{}", Timeouts(5.0, 0.3))
                await response.read()
    finally:
        await transport.aclose()


async def test_send_reads_bodies_and_streams() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await _read_request(reader)
            writer.write(b'HTTP/1.1 201 Created\r\ncontent-length: 11\r\n\r\n{"ok":true}')
            await writer.drain()

    transport = AiohttpTransport()
    try:
        async with _server(answer) as (url, connections):
            response = await transport.send("POST", url, {"x-request-id": "r1"}, b"{}", Timeouts(5.0, 5.0))
            assert (response.status, await response.read()) == (201, b'{"ok":true}')
            await response.aclose()
            response = await transport.send("GET", url, {}, None, Timeouts(5.0, 5.0))
            assert b"".join([chunk async for chunk in response.chunks()]) == b'{"ok":true}'
            await response.aclose()
        assert len(connections) == 1  # kept alive between the two
    finally:
        await transport.aclose()


async def test_nothing_listening_is_a_connect_error() -> None:
    """The failure that ejects a replica and moves the request elsewhere."""
    async with _server(_hang_up) as (url, _):
        pass  # closed: nothing listens on the port any more
    async with _client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(url + "/health")
