"""The gateway's HTTP/1.1 transport to its replicas: aiohttp under httpx's interface.

The gateway talks to replicas through `httpx.AsyncClient` (timeouts, streaming, and the fakes
tests plug in as `httpx.MockTransport`). httpx's own transport (httpcore on anyio) costs about a
millisecond of CPU per request, half of the gateway's cost on a trivial upstream; aiohttp's
C-accelerated client does the same work for a fraction. This transport only moves bytes:
- it takes httpx's per-request timeouts (`request.extensions["timeout"]`: connect, read) and
  keeps a keep-alive pool with no connection limit (the gateway bounds requests per replica);
- it maps aiohttp's failures onto httpx's exception types, which `upstream.py` decides on
  (connect failures move the request to another replica; timeouts do not):
  cannot connect -> ConnectError, connect too slow -> ConnectTimeout, silence -> ReadTimeout,
  the replica closed the connection -> RemoteProtocolError, other socket errors -> ReadError;
- it leaves bodies as they are (no decompression; the gateway asks for identity).
Media fetches keep httpx's transport: they connect to a checked address with the URL's host as
TLS server name (`media.py`), which this transport does not do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx

_KEEPALIVE_S = 60.0


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        timeout = request.extensions.get("timeout", {})
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=await request.aread() or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                ),
            )
        except Exception as exc:
            raise _httpx_error(exc, request) from exc
        return httpx.Response(
            response.status, headers=response.raw_headers, stream=_Body(response, request), request=request
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


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self.response, self.request = response, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except Exception as exc:
            raise _httpx_error(exc, self.request) from exc

    async def aclose(self) -> None:
        self.response.release()


def _httpx_error(exc: Exception, request: httpx.Request) -> Exception:
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
            return httpx_type(f"{type(exc).__name__}: {exc}", request=request)
    return exc
