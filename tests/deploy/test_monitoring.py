"""The Grafana dashboard and its provisioning: TTFT, visual tokens saved and FLOPs ratio by AIM
level, over the metrics the gateway exports (server/metrics.py) and vLLM's own metrics."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import DEPLOY, load_yaml_docs

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "aim-vllm.json"

# vLLM's own series the dashboard reads from the replicas (vllm/v1/metrics/loggers.py, 0.32).
VLLM_SERIES = {
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _series_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:aim_gateway_\w+|vllm:\w+)", expr))


def _known_series() -> set[str]:
    """Every series name the gateway exports (from its own registry) plus vLLM's."""
    from server.metrics import GatewayMetrics

    names = set(VLLM_SERIES)
    for family in GatewayMetrics().registry.collect():
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return names


def test_dashboard_queries_only_known_metrics(dashboard: dict[str, Any]) -> None:
    """A typo or a renamed metric gives an empty panel, not an error: every series a query names
    must be one that server/metrics.py or vLLM exports (histograms through _bucket/_sum/_count)."""
    used = set().union(*(_series_names(e) for e in _exprs(dashboard)))
    assert used, "the dashboard queries nothing"
    assert used <= _known_series(), f"unknown series: {used - _known_series()}"


def test_vllm_series_exist_in_the_pinned_vllm() -> None:
    """vLLM renames metrics between releases: the replica panels' series must be defined by the
    installed vLLM (its source is read, not imported, to keep this fast)."""
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations
    source = "".join(p.read_text() for p in Path(spec.submodule_search_locations[0]).glob("v1/metrics/*.py"))
    for series in VLLM_SERIES:
        assert f'"{series.removesuffix("_bucket")}"' in source, series


@pytest.mark.parametrize(
    "series",
    [
        "aim_gateway_ttft_seconds_bucket",
        "aim_gateway_visual_tokens_in_total",
        "aim_gateway_visual_tokens_merged_total",
        "aim_gateway_flops_ratio_sum",
        "aim_gateway_kv_blocks_saved_total",
    ],
    ids=["ttft", "tokens-in", "tokens-merged", "flops-ratio", "kv-saved"],
)
def test_dashboard_breaks_each_quantity_down_by_level(dashboard: dict[str, Any], series: str) -> None:
    """The issue asks for TTFT, tokens saved and FLOPs ratio *by preset*: each must be queried
    and aggregated `by (... level ...)`."""
    exprs = [e for e in _exprs(dashboard) if series in e]
    assert exprs, f"no panel queries {series}"
    assert all(re.search(r"by \([^)]*\blevel\b", e) for e in exprs)


def test_panels_use_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    """Panels refer to the datasource by uid; it must be the uid the provisioning file creates,
    or every panel shows 'datasource not found'."""
    (datasources,) = load_yaml_docs(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090", "the compose service name and port"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_provider_reads_the_mounted_directory() -> None:
    """The provider's path must be where compose mounts deploy/grafana/dashboards."""
    (providers,) = load_yaml_docs(GRAFANA / "provisioning" / "dashboards" / "aim-vllm.yaml")
    (compose,) = load_yaml_docs(DEPLOY / "compose.yaml")
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert providers["providers"][0]["options"]["path"] == mounts["./grafana/dashboards"]
