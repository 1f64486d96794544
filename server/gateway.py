"""What the gateway builds at startup: `Gateway` (everything a request needs) and its lifespan.

The lifespan owns two `httpx.AsyncClient`s, both ignoring proxy environment variables: one for
the replicas (upstream calls and health checks, over `transport.AiohttpTransport`) and one for
media fetches (httpx's own transport, which connects to the checked address). It runs a first
health round before serving (with `upstream_dns`: resolve, then check), then one per
`health_interval_s` in the background. Tests replace both transports with one fake.

The replica pool and the metrics exist before the app (the middleware records into them); the
rest is built inside the lifespan and kept on `app.state.gateway`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import anyio
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request

from server.chat import ChatService
from server.config import Settings
from server.discovery import DnsDiscovery
from server.media import MediaFetcher, Resolver
from server.metrics import GatewayMetrics
from server.middleware import RequestContextMiddleware
from server.routing import HealthChecker, ReplicaPool, make_policy
from server.transport import AiohttpTransport, Timeouts, replica_transport
from server.upstream import Upstream

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


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


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


def new_pool(settings: Settings) -> tuple[ReplicaPool, GatewayMetrics]:
    """The replica pool and the metrics that track it."""
    metrics = GatewayMetrics()
    pool = ReplicaPool(
        settings.upstreams, settings.max_outstanding_per_replica, make_policy(settings.routing_policy),
        settings.retry_after_s,
    )  # fmt: skip
    metrics.track_pool(pool)
    return pool, metrics


def request_middleware(settings: Settings, metrics: GatewayMetrics) -> list[Middleware]:
    return [
        Middleware(
            RequestContextMiddleware, metrics=metrics, max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
        )
    ]  # fmt: skip


def gateway_lifespan(
    settings: Settings,
    pool: ReplicaPool,
    metrics: GatewayMetrics,
    transport: httpx.AsyncBaseTransport | None,
    resolver: Resolver,
) -> Lifespan:
    """The app's lifespan; `transport` and `resolver` replace the network and DNS in tests."""

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

    return lifespan


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
