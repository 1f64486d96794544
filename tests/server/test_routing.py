"""Replica choice, bounded queues (429), health checks (eject, re-admit), retries on connection failure."""

from __future__ import annotations

import random

import httpx
import pytest

from server.errors import NoReplicaError, OverloadedError
from server.routing import (
    HealthChecker,
    LeastOutstandingPolicy,
    ReplicaPool,
    RoundRobinPolicy,
    RoutingPolicy,
    make_policy,
)
from tests.server.fakes import FakeCluster, chat_body, running_gateway


def _pool(
    n: int = 3, max_outstanding: int = 100, policy: RoutingPolicy = RoutingPolicy.LEAST_OUTSTANDING
) -> ReplicaPool:
    return ReplicaPool(
        [f"http://r{i}" for i in range(n)], max_outstanding, make_policy(policy), retry_after_s=2
    )


def test_least_outstanding_always_picks_a_least_loaded_replica() -> None:
    """Over a random mix of arrivals and completions, each choice has the minimum load among candidates."""
    rng = random.Random(0)
    pool = _pool(4)
    held = []
    for _ in range(2000):
        if held and rng.random() < 0.45:
            pool.release(held.pop(rng.randrange(len(held))))
            continue
        fewest = min(r.outstanding for r in pool.replicas)
        replica = pool.acquire()
        assert replica.outstanding - 1 == fewest
        held.append(replica)


def test_ties_rotate_so_idle_replicas_share_sequential_traffic() -> None:
    """With one request at a time every replica is tied at zero; taking them in turn spreads the load."""
    pool = _pool(3)
    chosen = []
    for _ in range(6):
        replica = pool.acquire()
        chosen.append(replica.url)
        pool.release(replica)
    assert chosen == ["http://r0", "http://r1", "http://r2"] * 2


def test_round_robin_policy() -> None:
    """The alternative policy exists behind the same Protocol and the str-Enum factory."""
    pool = _pool(2, policy=RoutingPolicy.ROUND_ROBIN)
    assert isinstance(pool.policy, RoundRobinPolicy)
    assert [pool.acquire().url for _ in range(4)] == ["http://r0", "http://r1"] * 2
    assert isinstance(make_policy(RoutingPolicy("least_outstanding")), LeastOutstandingPolicy)


def test_full_queues_give_429_with_retry_after() -> None:
    """A bounded queue per replica keeps overload at the edge, with a hint when to come back."""
    pool = _pool(2, max_outstanding=2)
    for _ in range(4):
        pool.acquire()
    with pytest.raises(OverloadedError) as info:
        pool.acquire()
    assert info.value.status_code == 429
    assert info.value.headers == {"Retry-After": "2"}


def test_no_healthy_replica_gives_503() -> None:
    """Ejected replicas (and ones already tried) are never chosen; with none left the answer is 503."""
    pool = _pool(2)
    pool.mark_down(pool.replicas[0], "test")
    assert pool.acquire().url == "http://r1"
    with pytest.raises(NoReplicaError):
        pool.acquire(exclude=[pool.replicas[1]])


async def test_health_checks_eject_and_readmit() -> None:
    """Dead (or unhealthy) replicas leave the rotation and come back after a successful check."""
    cluster = FakeCluster("a", "b", "c")
    pool = ReplicaPool(cluster.urls, 10, make_policy(RoutingPolicy.LEAST_OUTSTANDING), 1)
    async with httpx.AsyncClient(transport=cluster.transport) as client:
        checker = HealthChecker(pool, client, interval_s=60, timeout_s=1)
        cluster["a"].down = True
        cluster["b"].health_status = 503
        await checker.check_all()
        assert [r.healthy for r in pool.replicas] == [False, False, True]
        cluster["a"].down = False
        cluster["b"].health_status = 200
        await checker.check_all()
        assert [r.healthy for r in pool.replicas] == [True, True, True]


async def test_connection_failure_retries_on_another_replica_and_ejects() -> None:
    """A dead replica must cost the client nothing: the request moves on and the replica leaves rotation."""
    cluster = FakeCluster("a", "b")
    async with running_gateway(cluster) as (app, client):
        cluster["a"].down = True
        responses = [await client.post("/v1/chat/completions", json=chat_body()) for _ in range(4)]
        pool = app.state.gateway.pool
        assert [r.healthy for r in pool.replicas] == [False, True]
        metrics = (await client.get("/metrics")).text
    assert [r.status_code for r in responses] == [200] * 4
    assert len(cluster["b"].bodies) == 4
    assert "aim_gateway_upstream_connection_failures_total 1.0" in metrics


async def test_broken_connection_on_the_only_replica_is_retried_there() -> None:
    """A stale keep-alive connection must not eject the only replica (that would turn a blip into 503s)."""
    cluster = FakeCluster("a")
    cluster["a"].drop_next = 1
    async with running_gateway(cluster) as (app, client):
        response = await client.post("/v1/chat/completions", json=chat_body())
        healthy = app.state.gateway.pool.replicas[0].healthy
    assert response.status_code == 200
    assert len(cluster["a"].bodies) == 2
    assert healthy


async def test_all_replicas_unreachable_is_502_and_ready_reports_it() -> None:
    """When every attempt fails to connect the client gets a clear 502; /ready turns 503 after the check."""
    cluster = FakeCluster("a", "b")
    async with running_gateway(cluster) as (app, client):
        cluster["a"].down = cluster["b"].down = True
        response = await client.post("/v1/chat/completions", json=chat_body())
        await app.state.gateway.health.check_all()
        ready = await client.get("/ready")
        again = await client.post("/v1/chat/completions", json=chat_body())
        cluster["b"].down = False
        await app.state.gateway.health.check_all()
        recovered = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"
    assert ready.status_code == 503
    assert again.status_code == 503
    assert again.headers["retry-after"] == "1"
    assert recovered.status_code == 200


async def test_gateway_answers_429_when_queues_are_full() -> None:
    """The 429 path end to end: one slot, held by a request the fake replica keeps waiting."""
    import anyio

    cluster = FakeCluster("a")
    cluster["a"].gate = anyio.Event()
    first: list[httpx.Response] = []
    async with (
        running_gateway(cluster, max_outstanding_per_replica=1, retry_after_s=7) as (_, client),
        anyio.create_task_group() as group,
    ):

        async def hold() -> None:
            first.append(await client.post("/v1/chat/completions", json=chat_body()))

        group.start_soon(hold)
        while not cluster["a"].bodies:
            await anyio.sleep(0)
        rejected = await client.post("/v1/chat/completions", json=chat_body())
        cluster["a"].gate.set()
    assert rejected.status_code == 429
    assert rejected.headers["retry-after"] == "7"
    assert rejected.json()["error"]["type"] == "rate_limit_error"
    assert first[0].status_code == 200
