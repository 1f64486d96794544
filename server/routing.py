"""Replicas, their health, and the policy that picks one per request.

Each replica has a bounded queue: the requests the gateway has outstanding on it (vLLM queues
them internally). A request goes to a healthy replica with room, chosen by the policy; when every
healthy replica is full the gateway answers 429 with Retry-After, and 503 when none is healthy.
A replica is ejected when a connection to it fails or its `/health` check fails, and re-admitted
by the next successful check (`HealthChecker`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import anyio
import httpx

from server.errors import NoReplicaError, OverloadedError

logger = logging.getLogger(__name__)


class RoutingPolicy(StrEnum):
    LEAST_OUTSTANDING = "least_outstanding"
    ROUND_ROBIN = "round_robin"


@dataclass(eq=False)
class Replica:
    """One vLLM server. `outstanding` counts the gateway's requests on it (its queue)."""

    url: str
    max_outstanding: int
    healthy: bool = True
    outstanding: int = 0

    @property
    def has_room(self) -> bool:
        return self.outstanding < self.max_outstanding


class Policy(Protocol):
    def choose(self, candidates: Sequence[Replica]) -> Replica:
        """Pick one of `candidates` (non-empty, all healthy with room)."""
        ...


class LeastOutstandingPolicy:
    """The replica with the fewest outstanding requests; ties taken in turn."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[Replica]) -> Replica:
        fewest = min(replica.outstanding for replica in candidates)
        tied = [replica for replica in candidates if replica.outstanding == fewest]
        return tied[next(self._turn) % len(tied)]


class RoundRobinPolicy:
    """Each candidate in turn, whatever its load."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[Replica]) -> Replica:
        return candidates[next(self._turn) % len(candidates)]


_POLICIES: dict[RoutingPolicy, type[LeastOutstandingPolicy | RoundRobinPolicy]] = {
    RoutingPolicy.LEAST_OUTSTANDING: LeastOutstandingPolicy,
    RoutingPolicy.ROUND_ROBIN: RoundRobinPolicy,
}


def make_policy(kind: RoutingPolicy) -> Policy:
    """A fresh policy instance (no shared state between gateways)."""
    return _POLICIES[RoutingPolicy(kind)]()


class ReplicaPool:
    """The replicas of one gateway and their bookkeeping (single event loop, no locks needed)."""

    def __init__(self, urls: Iterable[str], max_outstanding: int, policy: Policy, retry_after_s: int) -> None:
        self.replicas = [Replica(url, max_outstanding) for url in urls]
        self.policy = policy
        self._retry_after = {"Retry-After": str(retry_after_s)}

    def acquire(self, exclude: Iterable[Replica] = ()) -> Replica:
        """Reserve a queue slot on a replica; release it with `release`."""
        skipped = set(exclude)
        live = [r for r in self.replicas if r.healthy and r not in skipped]
        if not live:
            raise NoReplicaError("no healthy replica is available", headers=self._retry_after)
        with_room = [r for r in live if r.has_room]
        if not with_room:
            raise OverloadedError("every replica's queue is full; retry later", headers=self._retry_after)
        replica = self.policy.choose(with_room)
        replica.outstanding += 1
        return replica

    def release(self, replica: Replica) -> None:
        replica.outstanding -= 1

    def mark_down(self, replica: Replica, reason: str) -> None:
        if replica.healthy:
            logger.warning("replica %s ejected: %s", replica.url, reason)
        replica.healthy = False

    def mark_up(self, replica: Replica) -> None:
        if not replica.healthy:
            logger.info("replica %s re-admitted", replica.url)
        replica.healthy = True

    @property
    def healthy_count(self) -> int:
        return sum(replica.healthy for replica in self.replicas)


class HealthChecker:
    """Active health checks: `GET <replica>/health` on every replica each `interval_s`."""

    def __init__(
        self, pool: ReplicaPool, client: httpx.AsyncClient, interval_s: float, timeout_s: float
    ) -> None:
        self.pool = pool
        self.client = client
        self.interval_s = interval_s
        self.timeout_s = timeout_s

    async def check_all(self) -> None:
        """One round over all replicas, concurrently."""
        async with anyio.create_task_group() as group:
            for replica in self.pool.replicas:
                group.start_soon(self.check, replica)

    async def check(self, replica: Replica) -> None:
        try:
            response = await self.client.get(f"{replica.url}/health", timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            self.pool.mark_down(replica, f"health check failed ({type(exc).__name__})")
            return
        if response.status_code == 200:
            self.pool.mark_up(replica)
        else:
            self.pool.mark_down(replica, f"health check answered HTTP {response.status_code}")

    async def run(self) -> None:
        """Check forever (cancelled at shutdown)."""
        while True:
            await anyio.sleep(self.interval_s)
            await self.check_all()
