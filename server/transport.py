"""The gateway's HTTP/1.1 transport to its replicas: `send()` in, `ReplicaResponse` out.

`upstream.py` calls `transport.send(method, url, headers, body, timeouts)` and reads the answer
as a whole (`read()`) or chunk by chunk (`chunks()`), then `aclose()`s it. No httpx request or
response objects on that path: building them cost about a tenth of the gateway's CPU per request.
- `AiohttpTransport` (deployed): aiohttp's C-accelerated client, one keep-alive pool with no
  connection limit (the gateway bounds requests per replica). It is also an httpx transport, so
  the health checker's `httpx.AsyncClient` runs over the same pool.
- `HttpxTransport`: any httpx transport behind `send()` (the tests' `httpx.MockTransport`).
Failures are httpx's exception types, which `upstream.py` decides on (connect failures move the
request to another replica; timeouts do not): cannot connect -> ConnectError, connect too slow
-> ConnectTimeout, silence -> ReadTimeout, the replica closed the connection ->
RemoteProtocolError, other socket errors -> ReadError. Bodies stay as they are (no
decompression; the gateway asks for identity). Media fetches keep httpx's own transport: they
connect to a checked address with the URL's host as TLS server name (`media.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NamedTuple, Protocol

import aiohttp
import httpx

_KEEPALIVE_S = 60.0


class Timeouts(NamedTuple):
    """Per attempt: seconds to connect, and seconds of silence while reading (None: no limit)."""

    connect: float | None
    read: float | None


class ReplicaResponse(Protocol):
    status: int

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class ReplicaTransport(Protocol):
    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeouts: Timeouts
    ) -> ReplicaResponse: ...


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

    async def send(
        self, method: str, url: str, headers: Any, body: bytes | None, timeouts: Timeouts
    ) -> _AiohttpResponse:
        session = self._session or self._open()
        if (timeout := self._timeouts.get(timeouts)) is None:
            timeout = self._timeouts[timeouts] = aiohttp.ClientTimeout(
                sock_connect=timeouts.connect, sock_read=timeouts.read
            )
        try:
            response = await session.request(
                method, url, headers=headers, data=body, allow_redirects=False, timeout=timeout
            )
        except Exception as exc:
            raise httpx_error(exc) from exc
        return _AiohttpResponse(response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """httpx's transport interface over `send` (the health checker's client)."""
        timeout = request.extensions.get("timeout", {})
        response = await self.send(
            request.method, str(request.url), request.headers.multi_items(), await request.aread() or None,
            Timeouts(timeout.get("connect"), timeout.get("read")),
        )  # fmt: skip
        return httpx.Response(
            response.status, headers=response.headers, stream=_HttpxBody(response), request=request
        )

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding")
        )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = response.raw_headers

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except Exception as exc:
            raise httpx_error(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except Exception as exc:
            raise httpx_error(exc) from exc

    async def aclose(self) -> None:
        self._response.release()  # back to the pool when read to the end, else the socket closes


class _HttpxBody(httpx.AsyncByteStream):
    def __init__(self, response: _AiohttpResponse) -> None:
        self.response = response

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.response.chunks()

    async def aclose(self) -> None:
        await self.response.aclose()


class HttpxTransport:
    """`send()` over an httpx transport (the tests' `httpx.MockTransport`, or httpx's own)."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeouts: Timeouts
    ) -> _HttpxResponse:
        extensions = {"timeout": {"connect": timeouts.connect, "read": timeouts.read,
                                  "write": timeouts.read, "pool": timeouts.connect}}  # fmt: skip
        request = httpx.Request(method, url, content=body, headers=headers, extensions=extensions)
        return _HttpxResponse(await self.transport.handle_async_request(request))


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code

    async def read(self) -> bytes:
        return await self._response.aread()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._response.aiter_bytes()

    async def aclose(self) -> None:
        await self._response.aclose()


def replica_transport(transport: httpx.AsyncBaseTransport) -> ReplicaTransport:
    """`transport` itself when it has `send()` (aiohttp), else wrapped in `HttpxTransport`."""
    return transport if isinstance(transport, AiohttpTransport) else HttpxTransport(transport)


def httpx_error(exc: Exception) -> Exception:
    """The httpx exception `upstream.py` expects for an aiohttp failure (module docstring)."""
    kinds: list[tuple[Any, type[httpx.HTTPError]]] = [
        (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
        (aiohttp.ClientConnectorError, httpx.ConnectError),
        (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
        (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
        (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
        (aiohttp.ClientError, httpx.ReadError),
        (TimeoutError, httpx.ReadTimeout),
        (OSError, httpx.ReadError),
    ]
    for aiohttp_type, httpx_type in kinds:
        if isinstance(exc, aiohttp_type):
            return httpx_type(f"{type(exc).__name__}: {exc}")
    return exc
