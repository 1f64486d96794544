"""Replica discovery by DNS (`upstream_dns`): settings, pool membership, resolution, the whole gateway."""

from __future__ import annotations

import socket

import anyio
import httpx
import pytest

from server.config import Settings
from server.discovery import DnsDiscovery, replica_url
from server.metrics import GatewayMetrics
from server.routing import ReplicaPool, RoutingPolicy, make_policy
from tests.deploy.manifests import K8S, load_yaml_docs
from tests.server.fakes import FakeCluster, chat_body, running_gateway

TARGET = "replicas.aim.svc.cluster.local:8001"
HOST = TARGET.split(":")[0]
CHAT = "/v1/chat/completions"


def _pool(*urls: str) -> ReplicaPool:
    return ReplicaPool(urls, 10, make_policy(RoutingPolicy.LEAST_OUTSTANDING), retry_after_s=1)


class StubResolver:
    """Answers `answer` for HOST (or raises it, when it is an exception); records the queries."""

    def __init__(self, answer: list[str] | Exception) -> None:
        self.answer = answer
        self.queries: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.queries.append((host, port))
        if isinstance(self.answer, Exception):
            raise self.answer
        return list(self.answer)


def _discovery(pool: ReplicaPool, resolver: object, static: tuple[str, ...] = ()) -> DnsDiscovery:
    return DnsDiscovery(pool, TARGET, resolver, 0.2, GatewayMetrics(), static)  # type: ignore[arg-type]


def test_settings_need_upstreams_or_upstream_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Either source of replicas suffices; with neither the gateway refuses to start, naming both."""
    monkeypatch.delenv("AIM_GW_UPSTREAMS", raising=False)
    monkeypatch.delenv("AIM_GW_UPSTREAM_DNS", raising=False)
    with pytest.raises(
        ValueError, match=r"upstreams \(--upstream URL.*upstream_dns \(--upstream-dns HOST:PORT"
    ):
        Settings()
    assert Settings(upstream_dns=f" {TARGET} ").upstream_dns == TARGET
    assert Settings(upstream_dns=TARGET).upstreams == []
    both = Settings(upstreams=["http://a:1"], upstream_dns=TARGET)
    assert (both.upstreams, both.upstream_dns) == (["http://a:1"], TARGET)
    monkeypatch.setenv("AIM_GW_UPSTREAM_DNS", TARGET)
    assert Settings().upstream_dns == TARGET


@pytest.mark.parametrize("value", ["replicas", "replicas:0", "replicas:70000", "http://replicas:80", ":80",
                                   "replicas:http", "fd00::1:80", "replicas:8001/v1"])  # fmt: skip
def test_bad_upstream_dns_is_a_clear_error(value: str) -> None:
    """A URL or a missing port would resolve nothing; say what form is expected instead."""
    with pytest.raises(ValueError, match="upstream_dns must be HOST:PORT"):
        Settings(upstream_dns=value)


def test_the_kubernetes_configmap_configures_discovery_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's AIM_GW_* variables, and nothing else, must make a valid gateway (no static list)."""
    monkeypatch.delenv("AIM_GW_UPSTREAMS", raising=False)
    (config,) = load_yaml_docs(K8S / "base" / "configmap.yaml")
    for name, value in config["data"].items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.upstreams == []
    assert settings.upstream_dns == config["data"]["AIM_GW_UPSTREAM_DNS"]


def test_sync_adds_new_replicas_out_of_rotation_and_keeps_known_state() -> None:
    """A new replica gets traffic only after a health check; known replicas keep health and load."""
    pool = _pool("http://a:1", "http://b:1")
    pool.replicas[1].healthy = False
    held = pool.acquire()
    pool.sync(["http://b:1", "http://a:1", "http://c:1"])
    assert [r.url for r in pool.replicas] == ["http://a:1", "http://b:1", "http://c:1"]
    assert [r.healthy for r in pool.replicas] == [True, False, False]
    assert pool.replicas[0] is held and held.outstanding == 1
    assert pool.acquire() is held  # the only replica in rotation


def test_vanished_replica_finishes_its_requests_then_is_dropped() -> None:
    """Scale-down must not cut requests off: the replica leaves rotation but stays until released."""
    pool = _pool("http://a:1", "http://b:1")
    first, second = pool.acquire(), pool.acquire()
    pool.sync(["http://b:1"])
    assert [r.url for r in pool.replicas] == ["http://b:1"]
    assert pool.draining == [first]
    assert all(pool.acquire() is second for _ in range(3))
    pool.release(first)
    assert pool.draining == []
    pool.sync([])
    assert pool.replicas == [] and pool.draining == [second]


def test_replica_back_while_draining_rejoins_with_its_queue() -> None:
    """A pod that flaps in and out of DNS keeps one queue count, so its bound still holds."""
    pool = _pool("http://a:1")
    replica = pool.acquire()
    pool.sync([])
    pool.sync(["http://a:1"])
    assert pool.replicas == [replica] and pool.draining == []
    assert replica.outstanding == 1 and replica.healthy


def test_replica_urls_of_ipv4_and_ipv6_addresses() -> None:
    assert replica_url("10.1.2.3", 8001) == "http://10.1.2.3:8001"
    assert replica_url("fd00:0::5", 8001) == "http://[fd00::5]:8001"


async def test_refresh_takes_every_a_and_aaaa_record_plus_the_static_list() -> None:
    """Each address is one replica (duplicates once); static upstreams stay members alongside."""
    pool = _pool("http://static:1")
    resolver = StubResolver(["10.0.0.2", "fd00::7", "10.0.0.1", "10.0.0.2"])
    await _discovery(pool, resolver, static=("http://static:1",)).refresh()
    assert resolver.queries == [(HOST, 8001)]
    assert [r.url for r in pool.replicas] == [
        "http://static:1", "http://10.0.0.1:8001", "http://10.0.0.2:8001", "http://[fd00::7]:8001",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "answer",
    [socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), ["not-an-address"], None],
    ids=["gaierror", "garbage", "timeout"],
)
async def test_failed_resolution_keeps_the_members(answer: object) -> None:
    """A DNS blip must not empty the pool; the health checks still eject replicas that are gone."""

    async def hang(host: str, port: int) -> list[str]:
        await anyio.sleep_forever()
        return []

    pool = _pool()
    discovery = _discovery(pool, StubResolver(["10.0.0.1"]))
    await discovery.refresh()
    discovery.resolver = hang if answer is None else StubResolver(answer)  # type: ignore[arg-type]
    await discovery.refresh()
    assert [r.url for r in pool.replicas] == ["http://10.0.0.1:8001"]
    assert b"aim_gateway_upstream_dns_failures_total 1.0" in discovery.metrics.render()[0]


async def test_an_empty_answer_removes_dns_replicas_but_not_static_ones() -> None:
    """No address means no replica from DNS (e.g. every pod unready): /ready must then say so."""
    pool = _pool("http://static:1")
    discovery = _discovery(pool, StubResolver(["10.0.0.1"]), static=("http://static:1",))
    await discovery.refresh()
    discovery.resolver = StubResolver([])
    await discovery.refresh()
    assert [r.url for r in pool.replicas] == ["http://static:1"]


def _dns_cluster() -> FakeCluster:
    """Replicas named by address, so `http://<address>:8000` from DNS reaches each fake."""
    cluster = FakeCluster("10.0.0.1", "10.0.0.2")
    cluster.dns[HOST] = ["10.0.0.1"]
    return cluster


async def test_gateway_follows_dns_while_serving() -> None:
    """Scale up, then down under load: the new replica gets traffic after one round, the vanished
    one finishes its request, and /ready and /metrics show the current members."""
    cluster = _dns_cluster()
    gate = cluster["10.0.0.1"].gate = anyio.Event()
    held: list[httpx.Response] = []
    async with (
        running_gateway(cluster, upstreams=[], upstream_dns=f"{HOST}:8000") as (app, client),
        anyio.create_task_group() as group,
    ):
        ready = (await client.get("/ready")).json()

        async def hold() -> None:
            held.append(await client.post(CHAT, json=chat_body()))

        group.start_soon(hold)
        while not cluster["10.0.0.1"].bodies:
            await anyio.sleep(0)
        cluster.dns[HOST] = ["10.0.0.2"]
        await app.state.gateway.health.round()
        moved = await client.post(CHAT, json=chat_body())
        during = (await client.get("/metrics")).text
        gate.set()
    pool = app.state.gateway.pool
    assert ready == {"status": "ready", "healthy_replicas": 1, "replicas": 1}
    assert moved.status_code == 200 and len(cluster["10.0.0.2"].bodies) == 1
    assert held[0].status_code == 200 and len(cluster["10.0.0.1"].bodies) == 1
    assert 'aim_gateway_replica_healthy{replica="http://10.0.0.1:8000"} 0.0' in during
    assert 'aim_gateway_replica_outstanding{replica="http://10.0.0.1:8000"} 1.0' in during
    assert 'aim_gateway_replica_healthy{replica="http://10.0.0.2:8000"} 1.0' in during
    assert [r.url for r in pool.replicas] == ["http://10.0.0.2:8000"] and pool.draining == []


async def test_gateway_with_no_resolvable_replica_is_not_ready_and_recovers() -> None:
    """Started before any replica pod is ready: 503 with Retry-After, then ready once DNS answers."""
    cluster = _dns_cluster()
    del cluster.dns[HOST]
    async with running_gateway(cluster, upstreams=[], upstream_dns=f"{HOST}:8000") as (app, client):
        before = await client.get("/ready")
        refused = await client.post(CHAT, json=chat_body())
        cluster.dns[HOST] = ["10.0.0.1", "10.0.0.2"]
        await app.state.gateway.health.round()
        answers = [await client.post(CHAT, json=chat_body()) for _ in range(2)]
        metrics = (await client.get("/metrics")).text
    assert before.status_code == 503 and refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert [a.status_code for a in answers] == [200, 200]
    assert len(cluster["10.0.0.1"].bodies) == len(cluster["10.0.0.2"].bodies) == 1
    assert "aim_gateway_upstream_dns_failures_total 1.0" in metrics
