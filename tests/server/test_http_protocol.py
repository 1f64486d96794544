"""The gateway's uvicorn protocol: a response head leaves in one write with the body that follows it,
and never waits longer than the current event-loop iteration."""

from __future__ import annotations

import asyncio

from server.http_protocol import _HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_head_and_body_leave_in_one_write() -> None:
    transport = _Transport()
    wrapped = _HeadWithBody(transport)  # type: ignore[arg-type]
    wrapped.write(HEAD)
    assert transport.writes == []
    wrapped.write(b"{}")
    assert transport.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)  # the pending flush finds nothing left
    assert transport.writes == [HEAD + b"{}"]


async def test_a_head_alone_goes_out_on_the_next_loop_iteration() -> None:
    """A streaming response whose first chunk is not ready yet still shows its status at once."""
    transport = _Transport()
    wrapped = _HeadWithBody(transport)  # type: ignore[arg-type]
    wrapped.write(HEAD)
    await asyncio.sleep(0)
    assert transport.writes == [HEAD]
    wrapped.write(b"5\r\nhello\r\n")
    assert transport.writes == [HEAD, b"5\r\nhello\r\n"]


async def test_close_sends_a_pending_head_first_and_the_rest_is_the_transports() -> None:
    transport = _Transport()
    wrapped = _HeadWithBody(transport)  # type: ignore[arg-type]
    wrapped.write(HEAD)
    wrapped.close()
    assert transport.writes == [HEAD] and transport.closed
    assert wrapped.get_extra_info("peername") == "info:peername"
    wrapped.write(b"body bytes")  # not a head: straight through
    assert transport.writes == [HEAD, b"body bytes"]
