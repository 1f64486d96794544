"""The gateway's OpenAPI contract: the answers it documents and the chat request's schema.

The chat-completions body is not parsed by FastAPI: the gateway reads the raw bytes (msgspec,
`body.py`) and validates them with `schemas.ChatCompletionRequest` itself, so that the body the
replica receives is built from one decode. `CHAT_REQUEST` declares that model as the operation's
request body (`openapi_extra`), and `add_request_models` puts it and its parts into the
components: the schema is generated from the models the gateway validates with. The
`X-AIM-Level` header is declared there too (its schema: `knob.AIM_TEXT_SCHEMA`) and read by the
handler. Measured in-process (CPU per request, 2026-12-07): a FastAPI body parameter of the same
model took 98 us against 85 us for the raw read and validation of the bench's text request, and
374 against 225 us with a 300 kB image data URL; a FastAPI `Header` parameter for the level
added ~40 us to a chat request of ~300 us, about as much as FastAPI's routing itself.

Answers are the replica's, passed through with `usage.aim.level` added; the models below document
them. `UsageAim` takes the engine's fields from `aim_vllm.usage.RequestStats` (plain Python).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import models_json_schema

from aim_vllm.usage import RequestStats
from server.errors import ErrorResponse
from server.knob import AIM_TEXT_SCHEMA, HEADER
from server.schemas import ChatCompletionRequest

_REF = "#/components/schemas/{model}"


def _engine_fields(schema: dict[str, Any]) -> None:
    engine = TypeAdapter(RequestStats).json_schema(ref_template=_REF)
    schema["properties"] = {**engine["properties"], **schema["properties"]}


class UsageAim(BaseModel):
    """What AIM did to this request: `level` always; the engine's fields when it measured the prefill."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_engine_fields)

    level: str = Field(description="The level the request ran at, in the canonical text form")


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int
    completion_tokens: int | None = None
    total_tokens: int
    aim: UsageAim


class Choice(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int
    message: dict[str, Any] = Field(description="The assistant message (role, content, tool_calls)")
    finish_reason: str | None


class ChatCompletion(BaseModel):
    """A non-streaming answer; a stream's chunks carry the same `usage` in their last chunk."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"]


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class HealthStatus(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyStatus(BaseModel):
    status: Literal["ready"] = "ready"
    healthy_replicas: int
    replicas: int


CHAT_REQUEST: dict[str, Any] = {
    "parameters": [
        {
            "name": HEADER,
            "in": "header",
            "required": False,
            "description": "The AIM level when the body has no `aim`",
            "schema": AIM_TEXT_SCHEMA,
        }
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ChatCompletionRequest")}}},
    },
}
CHAT_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ChatCompletion,
        "description": "The completion (JSON), or with `stream: true` server-sent events",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error statuses, and `default` for any other error."""
    described = {status: _error(_ERRORS[status], status in _RETRIED) for status in statuses}
    return described | {"default": _error("Any other error (404, 405, 500, ...)", False)}


def _error(description: str, retry_after: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if retry_after:
        answer["headers"] = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}
    return answer


_RETRY = "(with a Retry-After header)"
_RETRIED = (429, 503)
_ERRORS = {
    400: "Invalid request: `param` names the field at fault (a bad `aim` level included)",
    401: "Missing or wrong API key (Authorization: Bearer <key>)",
    413: "Request body larger than the gateway's cap",
    429: f"Every healthy replica's queue is full {_RETRY}",
    431: "Request headers larger than the gateway's caps",
    502: "A replica failed or answered unreadably",
    503: f"No healthy replica {_RETRY}",
    504: "A replica did not answer in time",
}


def add_request_models(app: FastAPI) -> None:
    """Make `app.openapi()` include the components of the request models declared by `$ref`."""
    _, top = models_json_schema([(ChatCompletionRequest, "validation")], ref_template=_REF)
    request_schemas: dict[str, Any] = top["$defs"]
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # FastAPI's, built once and cached on the app
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in request_schemas.items():
            components.setdefault(name, definition)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend it
