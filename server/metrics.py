"""Prometheus metrics of one gateway (its own registry: no process-global state).

Names (all prefixed `aim_gateway_`):
  requests_total{route,status}                 every HTTP request the gateway answered
  request_seconds{route}                       time to the last byte
  ttft_seconds{level}                          streaming: time to the first upstream event
  visual_tokens_in_total{level}                from `usage.aim.visual_tokens_in`
  visual_tokens_merged_total{level}            from `usage.aim.visual_tokens_merged`
  llm_prefill_flops_total{level}               from `usage.aim.llm_prefill_flops`
  llm_prefill_flops_off_total{level}           from `usage.aim.llm_prefill_flops_off`
  flops_ratio{level}                           histogram of `usage.aim.flops_ratio`
  kv_blocks_total{level}                       sum of `usage.aim.kv_blocks_per_layer` (layer-blocks
                                               the prompts' KV held in the engine)
  kv_blocks_saved_total{level}                 from `usage.aim.kv_blocks_saved` (pruned KV freed)
  upstream_connection_failures_total           replica connections that failed (retried)
  upstream_repairs_total                       multimodal requests resent after a 5xx (upstream.py)
  upstream_dns_failures_total                  failed resolutions of `upstream_dns` (discovery.py)
  replica_healthy{replica}, replica_outstanding{replica}   read from the pool at scrape time
                                               (members, and draining replicas with healthy 0)
`level` is the knob's bounded label: off, light, balanced, max, budget or custom.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server.routing import ReplicaPool

_RATIO_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "aim_gateway_requests", "Requests answered", ["route", "status"], registry=reg
        )
        self.latency = Histogram("aim_gateway_request_seconds", "Time to last byte", ["route"], registry=reg)
        self.ttft = Histogram(
            "aim_gateway_ttft_seconds", "Time to first token", ["level"], buckets=_TTFT_BUCKETS, registry=reg
        )
        self.visual_in = Counter("aim_gateway_visual_tokens_in", "Visual tokens in", ["level"], registry=reg)
        self.visual_merged = Counter(
            "aim_gateway_visual_tokens_merged", "Visual tokens after merging", ["level"], registry=reg
        )
        self.flops = Counter("aim_gateway_llm_prefill_flops", "LLM prefill FLOPs", ["level"], registry=reg)
        self.flops_off = Counter(
            "aim_gateway_llm_prefill_flops_off", "LLM prefill FLOPs with AIM off", ["level"], registry=reg
        )
        self.kv_blocks = Counter(
            "aim_gateway_kv_blocks", "KV blocks held per layer by prompts", ["level"], registry=reg
        )
        self.kv_saved = Counter(
            "aim_gateway_kv_blocks_saved", "KV blocks per layer freed by pruning", ["level"], registry=reg
        )
        self.flops_ratio = Histogram(
            "aim_gateway_flops_ratio", "FLOPs vs AIM off", ["level"], buckets=_RATIO_BUCKETS, registry=reg
        )
        self.repairs = Counter(
            "aim_gateway_upstream_repairs", "Multimodal requests resent after a server error", registry=reg
        )
        self.connection_failures = Counter(
            "aim_gateway_upstream_connection_failures", "Failed replica connections", registry=reg
        )
        self.dns_failures = Counter(
            "aim_gateway_upstream_dns_failures", "Failed resolutions of upstream_dns", registry=reg
        )
        self._replicas = _ReplicaCollector()
        reg.register(self._replicas)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # `_labelled`

    def track_pool(self, pool: ReplicaPool) -> None:
        """Replica gauges read `pool` at scrape time (its members change under DNS discovery)."""
        self._replicas.pool = pool

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self._labelled(self.requests, route, str(status)).inc()
        self._labelled(self.latency, route).observe(seconds)

    def observe_aim(self, label: str, aim: Mapping[str, Any]) -> None:
        """Aggregate one response's `usage.aim` (fields that are missing or not numbers are skipped)."""
        for counter, key in (
            (self.visual_in, "visual_tokens_in"),
            (self.visual_merged, "visual_tokens_merged"),
            (self.flops, "llm_prefill_flops"),
            (self.flops_off, "llm_prefill_flops_off"),
            (self.kv_saved, "kv_blocks_saved"),
        ):
            value = _number(aim.get(key))
            if value is not None and value >= 0:
                self._labelled(counter, label).inc(value)
        held = aim.get("kv_blocks_per_layer")
        if isinstance(held, list) and all(_number(v) is not None and v >= 0 for v in held):
            self._labelled(self.kv_blocks, label).inc(sum(held))
        ratio = _number(aim.get("flops_ratio"))
        if ratio is not None:
            self._labelled(self.flops_ratio, label).observe(ratio)

    def _labelled(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, cached: `labels()` validates and locks on every call (every
        label here is bounded: routes, statuses, knob labels)."""
        key = (id(metric), values)
        if (child := self._children.get(key)) is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ReplicaCollector(Collector):
    """`replica_healthy` and `replica_outstanding` for the replicas of one pool, as they are now."""

    def __init__(self) -> None:
        self.pool: ReplicaPool | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        healthy = GaugeMetricFamily("aim_gateway_replica_healthy", "1 if in rotation", labels=["replica"])
        outstanding = GaugeMetricFamily(
            "aim_gateway_replica_outstanding", "Requests outstanding", labels=["replica"]
        )
        members = self.pool.replicas if self.pool is not None else []
        draining = self.pool.draining if self.pool is not None else []
        for replica in (*members, *draining):
            in_rotation = replica.healthy and replica not in draining
            healthy.add_metric([replica.url], float(in_rotation))
            outstanding.add_metric([replica.url], float(replica.outstanding))
        yield healthy
        yield outstanding


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
