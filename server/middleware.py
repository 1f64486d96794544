"""Pure-ASGI middleware: request id in and out, header caps, access log and request metrics.

Pure ASGI (not BaseHTTPMiddleware) so that `receive` reaches the handlers untouched: they watch
it for the client's disconnect to cancel the upstream request.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import HeadersTooLargeError, error_response
from server.log import REQUEST_ID
from server.metrics import GatewayMetrics

logger = logging.getLogger("server.access")

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_LOGGED_PATH = 200


def pick_request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-Id when it is short and plain, else a fresh one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            if _VALID_REQUEST_ID.fullmatch(text):
                return text
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: GatewayMetrics, max_header_bytes: int, max_headers: int
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = pick_request_id(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        status = [500]
        started = time.monotonic()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            problem = self._header_problem(scope["headers"])
            if problem is not None:
                await error_response(problem)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, status[0], time.monotonic() - started)
            REQUEST_ID.reset(token)

    def _header_problem(self, headers: list[tuple[bytes, bytes]]) -> HeadersTooLargeError | None:
        size = sum(len(name) + len(value) for name, value in headers)
        if len(headers) > self.max_headers or size > self.max_header_bytes:
            return HeadersTooLargeError(
                f"request headers exceed {self.max_headers} headers or {self.max_header_bytes} bytes"
            )
        return None

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route: Any = scope.get("route")
        route_name = getattr(route, "path", "unmatched")
        self.metrics.observe_request(route_name, status, seconds)
        fields = {
            "method": scope["method"],
            "path": scope["path"][:_MAX_LOGGED_PATH],
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        }
        logger.info("%s %s %s", fields["method"], fields["path"], status, extra={"fields": fields})
