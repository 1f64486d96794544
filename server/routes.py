"""The gateway's endpoints: each delegates to the `Gateway`; their OpenAPI declarations sit with them.

`/v1/*` needs `Authorization: Bearer <key>` when API keys are configured: `create_app` then adds
the `require_api_key` dependency (checked before the body is read), and the OpenAPI schema says
so; `/health`, `/ready` and `/metrics` stay open. The chat body and the `X-AIM-Level` header are
read by the gateway, not by FastAPI, and declared in `openapi.CHAT_REQUEST` (`openapi.py` says
why). Dependencies are coroutines: a plain function would run in a worker thread per request.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.security import HTTPBearer
from starlette.responses import Response

from server.errors import AuthenticationError, NoReplicaError
from server.gateway import gateway_of
from server.knob import HEADER
from server.openapi import CHAT_ANSWERS, CHAT_REQUEST, HealthStatus, ModelList, ReadyStatus, errors
from server.upstream import until_disconnect


def check_api_key(keys: tuple[bytes, ...], token: str | None) -> None:
    """AuthenticationError unless `token` is one of `keys` (compared in constant time per key);
    no keys: every request passes."""
    if not keys:
        return
    candidate = (token or "").encode("latin-1")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(key, candidate)
    if token is None or not matched:
        raise AuthenticationError("invalid or missing API key", headers={"WWW-Authenticate": "Bearer"})


class ApiKeyBearer(HTTPBearer):
    """The API-key dependency: FastAPI's bearer scheme (its parsing, its OpenAPI security entry)
    with the gateway's check, as one dependency without sub-dependencies: FastAPI solves every
    level of them for every request."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        credentials = await super().__call__(request)
        check_api_key(gateway_of(request).api_keys, credentials.credentials if credentials else None)


require_api_key = ApiKeyBearer(auto_error=False, description="One of the gateway's API keys")


api = APIRouter(prefix="/v1")  # `create_app` adds `require_api_key` when there are keys
operations = APIRouter()


@api.post(
    "/chat/completions", tags=["chat"], operation_id="createChatCompletion", response_model=None,
    openapi_extra=CHAT_REQUEST, responses=CHAT_ANSWERS | errors(400, 401, 413, 429, 431, 502, 503, 504),
)  # fmt: skip
async def create_chat_completion(request: Request) -> Response:
    """An OpenAI chat completion from a healthy replica, at the request's AIM level."""
    gateway, level = gateway_of(request), request.headers.get(HEADER)
    raw = await gateway.chat.read(request)  # all of it before the disconnect watcher starts
    return await until_disconnect(request.receive, lambda: gateway.chat.handle(request, raw, level))


_MODELS_ANSWERS = {200: {"model": ModelList, "description": "The replica's model list"}}


@api.get(
    "/models",
    tags=["models"],
    operation_id="listModels",
    response_model=None,
    responses=_MODELS_ANSWERS | errors(401, 502, 503),
)
async def list_models(request: Request) -> Response:
    """The models a healthy replica serves."""
    gateway = gateway_of(request)
    request_id = request.scope["state"]["request_id"]
    body = await until_disconnect(request.receive, lambda: gateway.upstream.get("/v1/models", request_id))
    return Response(body, media_type="application/json")


@operations.get("/health", tags=["operations"], operation_id="health")
async def health() -> HealthStatus:
    """The gateway is alive."""
    return HealthStatus()


@operations.get("/ready", tags=["operations"], operation_id="ready", responses=errors(503))
async def ready(request: Request) -> ReadyStatus:
    """Some replica is healthy."""
    gateway = gateway_of(request)
    if gateway.pool.healthy_count == 0:
        retry_after = {"Retry-After": str(gateway.settings.retry_after_s)}
        raise NoReplicaError("no healthy replica", headers=retry_after)
    return ReadyStatus(healthy_replicas=gateway.pool.healthy_count, replicas=len(gateway.pool.replicas))


@operations.get(
    "/metrics", tags=["operations"], operation_id="metrics", response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
)  # fmt: skip
async def prometheus_metrics(request: Request) -> Response:
    body, content_type = gateway_of(request).metrics.render()
    return Response(body, media_type=content_type)
