"""Gateway exceptions and the one place that turns any of them into OpenAI error JSON.

Every error leaves the gateway as `{"error": {"message", "type", "param", "code"}}` (the
`ErrorResponse` model, which the OpenAPI schema documents) with the status of its class. Bad
input is a 4xx by construction: only `GatewayError` itself (and exceptions the gateway did not
foresee) map to 500, and those never echo request content.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

logger = logging.getLogger(__name__)


class ErrorObject(BaseModel):
    """The OpenAI error object."""

    message: str = Field(description="What went wrong; never echoes request content for a 500")
    type: str = Field(description="OpenAI error type, e.g. invalid_request_error, rate_limit_error")
    param: str | None = Field(description="The request field at fault, e.g. messages[0].content[1].type")
    code: str | None = Field(description="A machine-readable code, e.g. invalid_api_key, media_policy")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorObject


class GatewayError(Exception):
    """Base class: a status code, an OpenAI error `type`, and optional `param`/`code`/headers."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The `ErrorResponse` of this error, as JSON-ready data."""
        error = ErrorObject(message=self.message, type=self.error_type, param=self.param, code=self.code)
        return ErrorResponse(error=error).model_dump()


class InvalidRequestError(GatewayError, ValueError):
    """The request itself is wrong (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class MediaPolicyError(InvalidRequestError):
    """An image or video URL breaks the media policy (scheme, host, address, size, format)."""

    default_code = "media_policy"


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413
    default_code = "payload_too_large"


class HeadersTooLargeError(InvalidRequestError):
    status_code = 431
    default_code = "headers_too_large"


class NotFoundError(InvalidRequestError):
    status_code = 404
    default_code = "not_found"


class MethodNotAllowedError(InvalidRequestError):
    status_code = 405
    default_code = "method_not_allowed"


class AuthenticationError(GatewayError):
    """Missing or wrong API key (401)."""

    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class OverloadedError(GatewayError):
    """Every healthy replica's queue is full (429, with Retry-After)."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "replica_queue_full"


class NoReplicaError(GatewayError):
    """No healthy replica to send the request to (503, with Retry-After)."""

    status_code = 503
    error_type = "service_unavailable_error"
    default_code = "no_healthy_replica"


class UpstreamError(GatewayError):
    """A replica failed: unreachable, broken connection, 5xx or an unreadable answer (502)."""

    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    status_code = 504
    error_type = "timeout_error"
    default_code = "upstream_timeout"


class UpstreamStatusError(GatewayError):
    """A replica answered 4xx: the same status, message and type go back to the client."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status_code = status_code  # type: ignore[misc]  # per instance: the replica's status
        self.error_type = error_type  # type: ignore[misc]


class ClientDisconnectedError(GatewayError):
    """The client went away; the upstream request was cancelled (nobody reads this 499)."""

    status_code = 499
    error_type = "client_closed_request"


# Loc entries pydantic adds for union members ("str", "list[ContentPart]"): not request params.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def invalid_from_validation(exc: ValidationError, root: str | None = None) -> InvalidRequestError:
    """A 400 naming the most specific failing field, e.g. param `messages[0].content[1].type`."""
    return invalid_from_errors(exc.errors(include_url=False), root)


def invalid_from_errors(errors: Sequence[Any], root: str | None = None) -> InvalidRequestError:
    """`invalid_from_validation` for pydantic's error dicts (FastAPI's `RequestValidationError`)."""
    first = max(errors, key=lambda error: len(error["loc"]))
    param = root or ""
    for part in first["loc"]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_TAGS:
            param += f".{part}" if param else part
    message = first["msg"].removeprefix("Value error, ")
    return InvalidRequestError(f"{param}: {message}" if param else message, param=param or None)


def as_gateway_error(exc: Exception) -> GatewayError:
    """Map any exception to a GatewayError (unknown ones become an opaque 500, logged here)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, RequestValidationError):  # a declared header or parameter of the wrong shape
        return invalid_from_errors(exc.errors())
    if isinstance(exc, StarletteHTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            return NotFoundError("no such endpoint", headers=headers)
        if exc.status_code == 405:
            return MethodNotAllowedError("method not allowed for this endpoint", headers=headers)
        if exc.status_code < 500:
            return UpstreamStatusError(exc.status_code, str(exc.detail))
    logger.error("unhandled %s in the gateway", type(exc).__name__, exc_info=exc)
    return GatewayError("internal gateway error")


def error_response(exc: Exception) -> JSONResponse:
    """The OpenAI-shaped JSON response for `exc`."""
    err = as_gateway_error(exc)
    return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers)


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """The single exception handler: every error, whatever raised it, leaves through here."""
    return error_response(exc)


def install_error_handler(app: Starlette) -> None:
    for cls in (GatewayError, StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(cls, handle_error)
