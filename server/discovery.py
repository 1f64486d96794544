"""Replica discovery by DNS: every A/AAAA record of one name is a replica (Kubernetes headless Service).

`Settings.upstream_dns = "HOST:PORT"`: before each health round (`routing.HealthChecker`) the
gateway resolves HOST and makes the pool's members `http://<address>:PORT` for every address,
plus the static `Settings.upstreams`. A headless Service answers with one address per ready pod,
so replicas the autoscaler adds or removes are picked up within one health interval.

When resolution fails or times out (`health_timeout_s`), the members stay as they were: a DNS
blip must not empty the pool, and the health checks still eject replicas that are really gone.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

import anyio

from server.config import split_host_port
from server.media import Resolver
from server.metrics import GatewayMetrics
from server.routing import ReplicaPool

logger = logging.getLogger(__name__)


def replica_url(address: str, port: int) -> str:
    """`http://10.0.0.5:8001`, or `http://[fd00::5]:8001` for an IPv6 address."""
    ip = ipaddress.ip_address(address)
    host = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    return f"http://{host}:{port}"


class DnsDiscovery:
    """Keeps `pool`'s members equal to `static` plus the replicas `target` resolves to."""

    def __init__(
        self,
        pool: ReplicaPool,
        target: str,
        resolver: Resolver,
        timeout_s: float,
        metrics: GatewayMetrics,
        static: Sequence[str] = (),
    ) -> None:
        self.pool = pool
        self.host, self.port = split_host_port(target)
        self.resolver = resolver
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.static = list(static)

    async def refresh(self) -> None:
        try:
            with anyio.fail_after(self.timeout_s):
                addresses = await self.resolver(self.host, self.port)
            urls = sorted({replica_url(address, self.port) for address in addresses})
        except (OSError, ValueError) as exc:  # gaierror and TimeoutError are OSErrors
            self.metrics.dns_failures.inc()
            logger.warning(
                "resolving %s failed (%s); keeping the %d known replica(s)",
                self.host, type(exc).__name__, len(self.pool.replicas),
            )  # fmt: skip
            return
        if not urls:
            logger.warning("%s resolved to no address; no replica from DNS", self.host)
        self.pool.sync([*self.static, *urls])
