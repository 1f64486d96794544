"""The gateway application: `create_app(settings)` wires the pieces; handlers only delegate.

Endpoints: `POST /v1/chat/completions`, `GET /v1/models` (from a healthy replica), `GET /health`
(the gateway is alive), `GET /ready` (some replica is healthy), `GET /metrics` (Prometheus).
With API keys configured, the `/v1/*` endpoints need `Authorization: Bearer <key>`; the
operational endpoints stay open. Every error is OpenAI error JSON (`errors.py`).

The lifespan owns two `httpx.AsyncClient`s, both ignoring proxy environment variables: one for
the replicas (upstream calls and health checks, over `transport.AiohttpTransport`) and one for
media fetches (httpx's own transport, which connects to the checked address). It runs a first
health round before serving (with `upstream_dns`: resolve, then check), then one per
`health_interval_s` in the background. Tests replace both transports with one fake.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.chat import ChatService
from server.config import Settings
from server.discovery import DnsDiscovery
from server.errors import AuthenticationError, NoReplicaError, install_error_handler
from server.media import MediaFetcher, Resolver, system_resolver
from server.metrics import GatewayMetrics
from server.middleware import RequestContextMiddleware
from server.routing import HealthChecker, ReplicaPool, make_policy
from server.transport import AiohttpTransport, Timeouts, replica_transport
from server.upstream import Upstream, until_disconnect


@dataclass
class Gateway:
    """Everything a request needs, built at startup and kept on `app.state.gateway`."""

    settings: Settings
    pool: ReplicaPool
    metrics: GatewayMetrics
    upstream: Upstream
    chat: ChatService
    health: HealthChecker
    api_keys: tuple[bytes, ...]


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    resolver: Resolver = system_resolver,
) -> Starlette:
    """A gateway app; `transport` and `resolver` replace the network and DNS (media URLs and
    `upstream_dns`) in tests."""
    metrics = GatewayMetrics()
    pool = ReplicaPool(
        settings.upstreams, settings.max_outstanding_per_replica, make_policy(settings.routing_policy),
        settings.retry_after_s,
    )  # fmt: skip
    metrics.track_pool(pool)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        to_replicas = transport or AiohttpTransport()
        async with _client(settings, to_replicas) as client, _client(settings, transport) as media_client:
            gateway = _build_gateway(settings, pool, metrics, to_replicas, client, media_client, resolver)
            app.state.gateway = gateway
            await gateway.health.round()
            async with anyio.create_task_group() as group:
                group.start_soon(gateway.health.run)
                yield
                group.cancel_scope.cancel()

    context = Middleware(
        RequestContextMiddleware, metrics=metrics, max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
    )  # fmt: skip
    app = Starlette(middleware=[context], lifespan=lifespan)  # plain Starlette: no dependency solving
    app.router.redirect_slashes = False
    install_error_handler(app)
    for path, endpoint, method in ROUTES:
        app.add_route(path, endpoint, methods=[method])
    return app


def _timeout(settings: Settings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.connect_timeout_s, read=settings.read_timeout_s, write=settings.read_timeout_s,
        pool=settings.connect_timeout_s,
    )  # fmt: skip


def _client(settings: Settings, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    return httpx.AsyncClient(transport=transport, timeout=_timeout(settings), limits=limits, trust_env=False)


def _build_gateway(
    settings: Settings,
    pool: ReplicaPool,
    metrics: GatewayMetrics,
    to_replicas: httpx.AsyncBaseTransport,
    client: httpx.AsyncClient,
    media_client: httpx.AsyncClient,
    resolver: Resolver,
) -> Gateway:
    """`client` (health checks) runs over `to_replicas`, which `Upstream` uses directly."""
    timeouts = Timeouts(settings.connect_timeout_s, settings.read_timeout_s)
    upstream = Upstream(replica_transport(to_replicas), timeouts, pool, settings, metrics)
    media = MediaFetcher(settings, media_client, resolver)
    discovery = None
    if (target := settings.upstream_dns) is not None:
        static = settings.upstreams
        discovery = DnsDiscovery(pool, target, resolver, settings.health_timeout_s, metrics, static)
    health = HealthChecker(pool, client, settings.health_interval_s, settings.health_timeout_s, discovery)
    return Gateway(
        settings=settings,
        pool=pool,
        metrics=metrics,
        upstream=upstream,
        chat=ChatService(settings, upstream, media, metrics),
        health=health,
        api_keys=tuple(key.get_secret_value().encode() for key in settings.api_keys),
    )


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


def require_api_key(request: Request) -> None:
    """Bearer check against every configured key, in constant time per key."""
    keys = gateway_of(request).api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    candidate = token.strip().encode("latin-1")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(key, candidate)
    if scheme.lower() != "bearer" or not matched:
        raise AuthenticationError("invalid or missing API key", headers={"WWW-Authenticate": "Bearer"})


async def chat_completions(request: Request) -> Response:
    require_api_key(request)
    gateway = gateway_of(request)
    raw = await gateway.chat.read(request)  # all of it before the disconnect watcher starts
    return await until_disconnect(request.receive, lambda: gateway.chat.handle(request, raw))


async def list_models(request: Request) -> Response:
    require_api_key(request)
    gateway = gateway_of(request)
    request_id = request.scope["state"]["request_id"]
    body = await until_disconnect(request.receive, lambda: gateway.upstream.get("/v1/models", request_id))
    return Response(body, media_type="application/json")


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    pool = gateway_of(request).pool
    if pool.healthy_count == 0:
        raise NoReplicaError(
            "no healthy replica", headers={"Retry-After": str(gateway_of(request).settings.retry_after_s)}
        )
    return JSONResponse(
        {"status": "ready", "healthy_replicas": pool.healthy_count, "replicas": len(pool.replicas)}
    )


async def prometheus_metrics(request: Request) -> Response:
    body, content_type = gateway_of(request).metrics.render()
    return Response(body, media_type=content_type)


# The `/v1/*` endpoints check the API key first; the operational ones stay open.
ROUTES = (
    ("/v1/chat/completions", chat_completions, "POST"),
    ("/v1/models", list_models, "GET"),
    ("/health", health, "GET"),
    ("/ready", ready, "GET"),
    ("/metrics", prometheus_metrics, "GET"),
)
