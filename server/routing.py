"""Replicas, their health, and the policy that picks one per request.

Each replica has a bounded queue: the requests the gateway has outstanding on it (vLLM queues
them internally). A request goes to a healthy replica with room, chosen by the policy; when every
healthy replica is full the gateway answers 429 with Retry-After, and 503 when none is healthy.
A replica is ejected when a connection to it fails or its `/health` check fails, and re-admitted
by the next successful check (`HealthChecker`).

Membership can change while serving (`ReplicaPool.sync`, driven by DNS discovery before each
health round): a new replica joins out of rotation until its first successful check; a vanished
one leaves the rotation at once, and the requests it still has finish there (it stays listed as
draining until the last one is released; if it reappears meanwhile, it rejoins with its queue).
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
    """The replicas of one gateway and their bookkeeping (single event loop, no locks needed).

    `replicas` are the members (in rotation when healthy); `draining` are former members that
    still have outstanding requests.
    """

    def __init__(self, urls: Iterable[str], max_outstanding: int, policy: Policy, retry_after_s: int) -> None:
        self.max_outstanding = max_outstanding
        self.replicas = [Replica(url, max_outstanding) for url in dict.fromkeys(urls)]
        self.draining: list[Replica] = []
        self.policy = policy
        self._retry_after = {"Retry-After": str(retry_after_s)}

    def sync(self, urls: Iterable[str]) -> None:
        """Make the members exactly `urls` (see module docstring); members keep their state."""
        ordered = list(dict.fromkeys(urls))
        wanted = set(ordered)
        known = {replica.url: replica for replica in (*self.replicas, *self.draining)}
        members = [replica for replica in self.replicas if replica.url in wanted]
        for url in ordered:
            replica = known.get(url)
            if replica is None:
                logger.info("replica %s discovered; in rotation after its first health check", url)
                members.append(Replica(url, self.max_outstanding, healthy=False))
            elif replica in self.draining:
                logger.info("replica %s is back", url)
                self.draining.remove(replica)
                members.append(replica)
        for replica in self.replicas:
            if replica.url not in wanted:
                left = replica.outstanding
                logger.info("replica %s vanished; %d request(s) finish there", replica.url, left)
                if replica.outstanding > 0:
                    self.draining.append(replica)
        self.replicas = members

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
        if replica.outstanding == 0 and replica in self.draining:
            self.draining.remove(replica)

    def mark_down(self, replica: Replica, reason: str) -> None:
        if replica.healthy:
            logger.warning("replica %s ejected: %s", replica.url, reason)
        replica.healthy = False

    def mark_up(self, replica: Replica) -> None:
        if not replica.healthy:
            logger.info("replica %s in rotation", replica.url)
        replica.healthy = True

    @property
    def healthy_count(self) -> int:
        return sum(replica.healthy for replica in self.replicas)


class Discovery(Protocol):
    async def refresh(self) -> None:
        """Update the pool's members (`ReplicaPool.sync`); keep them when the source fails."""
        ...


class HealthChecker:
    """Each `interval_s`: refresh the members (when discovering), then `GET <replica>/health` on each."""

    def __init__(
        self,
        pool: ReplicaPool,
        client: httpx.AsyncClient,
        interval_s: float,
        timeout_s: float,
        discovery: Discovery | None = None,
    ) -> None:
        self.pool = pool
        self.client = client
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.discovery = discovery

    async def round(self) -> None:
        """Discovery, then health checks: a new replica is checked before it gets traffic."""
        if self.discovery is not None:
            await self.discovery.refresh()
        await self.check_all()

    async def check_all(self) -> None:
        """One check of every member, concurrently."""
        async with anyio.create_task_group() as group:
            for replica in list(self.pool.replicas):
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
        """A round each interval, forever (cancelled at shutdown)."""
        while True:
            await anyio.sleep(self.interval_s)
            await self.round()
