"""deploy/compose.yaml (+ compose.cuda.yaml) checked structurally: there is no Docker engine here
to run `docker compose config`, so the file is read as YAML with compose's `${VAR:-default}`
substitution applied for an empty environment."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

from tests.deploy.manifests import DEPLOY, REPO, interpolate_compose, load_yaml_docs

REPLICAS = ("replica-1", "replica-2")
REPLICA_PORT = "8001"
GATEWAY_PORT = "8000"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = load_yaml_docs(DEPLOY / "compose.yaml")
    return interpolate_compose(doc)


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def _flag(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1]


def _healthcheck_url(service: dict[str, Any]) -> str:
    test = " ".join(service["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)['\" ]", test + " ")
    assert match, f"no local URL in healthcheck {test}"
    return f"{match.group(1)}{match.group(2)}"


def test_services_are_gateway_two_replicas_and_monitoring(compose: dict[str, Any]) -> None:
    """The issue's topology: one gateway, two vLLM replicas, Prometheus and Grafana."""
    assert set(compose["services"]) == {"gateway", *REPLICAS, "prometheus", "grafana"}
    assert "version" not in compose, "the top-level version key is obsolete in compose v2"


def test_project_name_comes_from_the_env_file(compose: dict[str, Any]) -> None:
    """Debian's docker-compose 1.29 rejects a top-level `name:`; deploy/.env names the project for
    it and for Compose v2 alike, so volumes are `aim-vllm_models` with either."""
    assert "name" not in compose
    env = dict(
        line.split("=", 1) for line in (DEPLOY / ".env").read_text().splitlines() if line and line[0] != "#"
    )
    assert env == {"COMPOSE_PROJECT_NAME": "aim-vllm"}


def test_replicas_run_the_engine_and_publish_no_host_port(compose: dict[str, Any]) -> None:
    """Replicas must be reachable only through the gateway (auth, limits, AIM knob), so they
    expose their port on the compose network and publish nothing on the host."""
    for name in REPLICAS:
        replica = compose["services"][name]
        assert "ports" not in replica, f"{name} publishes a host port"
        assert [str(p) for p in replica["expose"]] == [REPLICA_PORT]
        words = _command(replica)
        assert words[0] == "engine"
        assert _flag(words, "--host") == "0.0.0.0" and _flag(words, "--port") == REPLICA_PORT


def test_replicas_have_shared_memory_and_models(compose: dict[str, Any]) -> None:
    """vLLM's processes exchange tensors through /dev/shm (Docker's default is 64 MB), and
    models come from the read-only models volume at /models."""
    for name in REPLICAS:
        replica = compose["services"][name]
        size = replica["shm_size"]
        assert re.fullmatch(r"\d+(gb|g|GB)", str(size)) and int(re.match(r"\d+", size)[0]) >= 1
        assert "models:/models:ro" in replica["volumes"]
    assert "models" in compose["volumes"]


def test_gateway_routes_to_every_replica_and_waits_for_them(compose: dict[str, Any]) -> None:
    """The gateway's --upstream list must name exactly the replica services on their port, and
    start only after they are healthy."""
    gateway = compose["services"]["gateway"]
    words = _command(gateway)
    assert words[0] == "gateway"
    assert _flag(words, "--port") == GATEWAY_PORT
    upstreams = [words[i + 1] for i, w in enumerate(words) if w == "--upstream"]
    assert upstreams == [f"http://{name}:{REPLICA_PORT}" for name in REPLICAS]
    assert gateway["depends_on"] == {name: {"condition": "service_healthy"} for name in REPLICAS}
    (published,) = gateway["ports"]
    assert published.rsplit(":", 1)[1] == GATEWAY_PORT


def test_every_service_has_a_healthcheck_on_its_own_port(compose: dict[str, Any]) -> None:
    """depends_on: service_healthy needs health checks, and a check against the wrong port would
    mark a working replica unhealthy forever."""
    ports = {"gateway": GATEWAY_PORT, "prometheus": "9090", "grafana": "3000"}
    ports |= dict.fromkeys(REPLICAS, REPLICA_PORT)
    for name, service in compose["services"].items():
        check = service["healthcheck"]
        assert check["test"][0] == "CMD" and check["retries"] >= 1
        port, path = _healthcheck_url(service).split("/", 1)
        assert port == ports[name], f"{name} checks port {port}"
        if name == "gateway" or name in REPLICAS:
            assert path == "health"


def test_aim_services_build_the_top_level_dockerfile(compose: dict[str, Any]) -> None:
    """gateway and replicas share one image built from the repository's Dockerfile with the
    ENGINE argument (cpu by default), as `docker build` in deploy/README.md does."""
    for name in ("gateway", *REPLICAS):
        service = compose["services"][name]
        build = service["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == REPO and (context / build["dockerfile"]).is_file()
        assert build["args"]["ENGINE"] == "cpu"
        assert service["image"] == "aim-vllm:cpu"
        assert service["init"] is True, "vLLM spawns workers: PID 1 must reap and forward signals"


def test_prometheus_scrapes_the_gateway_and_both_replicas(compose: dict[str, Any]) -> None:
    """Scrape targets must be compose service names on the ports those services listen on,
    or the dashboard stays empty without any error."""
    prometheus = compose["services"]["prometheus"]
    mount = next(v for v in prometheus["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro"))
    (config,) = load_yaml_docs(DEPLOY / mount.split(":")[0])
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = {f"gateway:{GATEWAY_PORT}"} | {f"{name}:{REPLICA_PORT}" for name in REPLICAS}
    assert targets == expected
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"])


def test_grafana_mounts_exist(compose: dict[str, Any]) -> None:
    """Grafana's provisioning and dashboard bind mounts point at files in deploy/; a missing
    source would be created empty by Docker and the dashboard would silently not load."""
    grafana = compose["services"]["grafana"]
    for volume in grafana["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (DEPLOY / source).is_dir(), source
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / home.rsplit("/", 1)[1]).is_file()


def test_cuda_override_gives_each_replica_a_gpu(compose: dict[str, Any]) -> None:
    """compose.cuda.yaml may only touch services that exist and must reserve an NVIDIA GPU for
    each replica (and none for the gateway)."""
    (override,) = load_yaml_docs(DEPLOY / "compose.cuda.yaml")
    override = interpolate_compose(override)
    assert set(override["services"]) == set(REPLICAS)
    gpus = []
    for name in REPLICAS:
        (device,) = override["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        gpus += device["device_ids"]
    assert len(set(gpus)) == len(REPLICAS), "by default each replica gets its own GPU"


def test_one_default_level_in_serve_compose_and_kubernetes(compose: dict[str, Any]) -> None:
    """The gateway decides the level of requests that name none; compose and the k8s ConfigMap
    leave it at the gateway's own default (`serve`'s too), so all three serve the same."""
    from server.config import Settings

    default = Settings.model_fields["default_aim"].default
    gateway = compose["services"]["gateway"]
    words = _command(gateway)
    assert "--default-aim" not in words and "AIM_GW_DEFAULT_AIM" not in gateway.get("environment", {})
    docs = load_yaml_docs(DEPLOY / "k8s" / "base" / "configmap.yaml")
    (configmap,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    assert configmap["data"]["AIM_GW_DEFAULT_AIM"] == default == "off"
