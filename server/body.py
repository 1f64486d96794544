"""Reading a JSON request body safely: size cap, strict UTF-8 and JSON, nesting cap.

Each failure is a 4xx in the OpenAI shape: 413 past the size cap, 400 for invalid UTF-8, invalid
JSON (NaN/Infinity included), deep nesting, lone surrogates and bodies that are not objects.
Bodies are decoded by msgspec; what it refuses goes to the standard library (`jsonio`), which
decides as before and words the error.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from server import jsonio
from server.errors import ClientDisconnectedError, InvalidRequestError, PayloadTooLargeError


async def read_json_object(request: Request, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object, read at most `max_bytes` far."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"request body is larger than {max_bytes} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLargeError(f"request body is larger than {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnectedError("the client disconnected while sending the body") from None
    return parse_json_object(b"".join(chunks), max_depth)


def parse_json_object(data: bytes, max_depth: int) -> dict[str, Any]:
    value = jsonio.loads(data, fallback=lambda _: _stdlib_loads(data, max_depth))
    if not isinstance(value, dict):
        raise InvalidRequestError("request body must be a JSON object")
    check_json_depth(value, max_depth)
    return value


def _stdlib_loads(data: bytes, max_depth: int) -> Any:
    """What msgspec refused: accepted as `json` accepts it, or a 400 that says why."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("request body is not valid UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidRequestError(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise InvalidRequestError(f"request body is not valid JSON: {reason}") from None
    _check_strings(value)
    return value


def check_json_depth(value: Any, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth`."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise InvalidRequestError(f"JSON nested deeper than {max_depth} levels")
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, dict | list))
        else:
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))


def _check_strings(value: Any) -> None:
    """Refuse strings (keys included) holding lone surrogates: not Unicode, not UTF-8."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict | list):
            stack.extend([*node.keys(), *node.values()] if isinstance(node, dict) else node)
        elif isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequestError("request body holds a string that is not valid Unicode") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
