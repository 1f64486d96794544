"""deploy/k8s: schema validation with kubernetes-validate (offline, bundled schemas), kustomization
references, and the wiring between the manifests (labels, ports, DNS name, probes, security).

kustomize is not installed here: base files and overlay patches are validated as plain manifests,
and the overlays are also rendered by a small stand-in (tests/deploy/manifests.py) and validated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes_validate import utils as kubernetes_validate

from tests.deploy.manifests import (
    K8S,
    find_resource,
    kustomization_paths,
    load_kustomization,
    load_yaml_docs,
    parse_dockerfile,
    pod_containers,
    render_kustomization,
    strip_nulls,
)

# The oldest Kubernetes still widely run, and the newest the bundled schemas know.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
OVERLAYS = ("cpu", "cuda")
KUSTOMIZATIONS = [K8S / "base"] + [K8S / "overlays" / o for o in OVERLAYS]
MANIFEST_FILES = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
REPLICA, GATEWAY = "aim-vllm-replica", "aim-vllm-gateway"
HEADLESS = "aim-vllm-replicas-headless"
UPSTREAM_DNS = "AIM_GW_UPSTREAM_DNS"


def _rel(path: Path) -> str:
    return str(path.relative_to(K8S))


def _validate(doc: dict[str, Any], where: str) -> None:
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.caught.path)
            pytest.fail(f"{where}: {doc['kind']}/{doc['metadata']['name']} @ {version}: {path}: {exc}")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render_kustomization(K8S / "overlays" / request.param)


def _pod_spec(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return find_resource(docs, "Deployment", name)["spec"]["template"]["spec"]


def _container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (container,) = _pod_spec(docs, name)["containers"]
    return container


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=_rel)
def test_manifest_files_validate(path: Path) -> None:
    """Every base manifest and overlay patch, read as a plain manifest (patches without their
    `key: null` deletions), passes strict schema validation: no unknown or mistyped field."""
    for doc in load_yaml_docs(path):
        _validate(strip_nulls(doc), _rel(path))


def test_rendered_overlays_validate(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """What `kubectl apply -k overlays/<engine>` would send, approximated, validates too: a
    patch can be valid alone and still produce an invalid merge (two volume sources)."""
    overlay, docs = rendered
    for doc in docs:
        _validate(doc, f"overlays/{overlay} (rendered)")
    for volume in _pod_spec(docs, REPLICA)["volumes"]:
        assert len(volume) == 2, f"volume {volume['name']} has several sources: {sorted(volume)}"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_rel)
def test_kustomization_references_exist_and_cover_the_directory(directory: Path) -> None:
    """kustomize fails on a missing file, and a manifest nobody references is never deployed."""
    referenced = kustomization_paths(directory)
    for path in referenced:
        assert path.exists(), f"{_rel(directory)} references missing {path.name}"
    own_files = {p for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
    unreferenced = sorted(p.name for p in own_files - set(referenced))
    assert not unreferenced, f"{_rel(directory)} does not reference {unreferenced}"
    kustomization = load_kustomization(directory)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_patches_target_base_resources(overlay: str) -> None:
    """A strategic-merge patch whose kind/name matches nothing makes `kubectl apply -k` fail."""
    base = render_kustomization(K8S / "base")
    directory = K8S / "overlays" / overlay
    for entry in load_kustomization(directory)["patches"]:
        (patch,) = load_yaml_docs(directory / entry["path"])
        find_resource(base, patch["kind"], patch["metadata"]["name"])


def test_engine_specific_resources(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """The CUDA overlay asks for GPUs and runs the cuda image; the CPU overlay asks for no GPU
    (a CPU pod requesting nvidia.com/gpu would never schedule on CPU nodes)."""
    overlay, docs = rendered
    vllm = _container(docs, REPLICA)
    gpus = vllm["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus is not None) == (overlay == "cuda")
    if gpus is not None:
        assert vllm["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert vllm["image"] == f"aim-vllm:{overlay}"
    assert _container(docs, GATEWAY)["image"] == f"aim-vllm:{overlay}"
    hpa = find_resource(docs, "HorizontalPodAutoscaler", REPLICA)
    metric_types = {m["type"] for m in hpa["spec"]["metrics"]}
    assert metric_types == ({"Pods"} if overlay == "cuda" else {"Resource"})


def test_replica_probes_shared_memory_and_models(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Replicas need startup/readiness/liveness probes on vLLM's /health (a slow model load must
    not be killed), a RAM-backed /dev/shm, and the models volume at /models."""
    _, docs = rendered
    vllm = _container(docs, REPLICA)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = vllm["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "allow 10 minutes to load"
    volumes = {v["name"]: v for v in _pod_spec(docs, REPLICA)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in vllm["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "/models" in mounts


def test_pods_run_non_root_with_resources(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Pods satisfy the restricted pod security level the namespace enforces, as the image's
    numeric user, and every container declares requests and limits."""
    _, docs = rendered
    runtime = parse_dockerfile().stages[-1]
    image_uid = int(dict(i.args.partition("=")[::2] for i in runtime.all("ARG"))["AIM_UID"])
    for name in (REPLICA, GATEWAY):
        pod = _pod_spec(docs, name)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == image_uid
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod_containers(find_resource(docs, "Deployment", name)):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()


def test_gateway_discovers_replicas_through_the_headless_service(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """AIM_GW_UPSTREAM_DNS must be the headless Service's in-cluster name and port, and that
    Service must select the replica pods on their container port; otherwise the gateway finds
    no replica."""
    _, docs = rendered
    service = find_resource(docs, "Service", HEADLESS)
    assert service["spec"]["clusterIP"] == "None"
    replica = find_resource(docs, "Deployment", REPLICA)
    pod_labels = replica["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    (container_port,) = _container(docs, REPLICA)["ports"]
    assert port["targetPort"] == container_port["name"] and port["port"] == container_port["containerPort"]
    config = find_resource(docs, "ConfigMap", GATEWAY)["data"]
    namespace = service["metadata"]["namespace"]
    assert config[UPSTREAM_DNS] == f"{HEADLESS}.{namespace}.svc.cluster.local:{port['port']}"
    gateway = _container(docs, GATEWAY)
    assert {"configMapRef": {"name": GATEWAY}} in gateway["envFrom"]
    assert gateway["args"][0] == "gateway"


def _gateway_setting_names() -> set[str]:
    """Environment names of the gateway's settings (server/config.py, pydantic-settings)."""
    from pydantic_settings import BaseSettings

    import server.config

    classes = [
        c
        for c in vars(server.config).values()
        if isinstance(c, type) and issubclass(c, BaseSettings) and c is not BaseSettings
    ]
    return {
        (c.model_config.get("env_prefix") or "").upper() + name.upper()
        for c in classes
        for name in c.model_fields
    }


def test_gateway_settings_are_known_to_the_gateway() -> None:
    """pydantic-settings silently ignores environment variables that are not fields, so a
    misspelt ConfigMap key (or the optional API-key variable) would configure nothing."""
    names = _gateway_setting_names()
    (config,) = load_yaml_docs(K8S / "base" / "configmap.yaml")
    env = set(config["data"])
    env |= {e["name"] for e in _container(render_kustomization(K8S / "base"), GATEWAY)["env"]}
    unknown = env - names - {"AIM_HEALTHCHECK_URL"}  # read by the image's HEALTHCHECK only
    assert not unknown, f"settings the gateway does not define: {sorted(unknown)}"


def test_gateway_supports_replica_discovery_by_dns() -> None:
    """Kubernetes replicas come and go with the HPA, so the gateway must take its replicas from
    the headless Service's DNS name (AIM_GW_UPSTREAM_DNS) rather than a static list."""
    assert UPSTREAM_DNS in _gateway_setting_names()


def test_selectors_of_service_pdb_hpa_and_networkpolicy_match(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """Label selectors fail silently: a PDB or NetworkPolicy selecting nothing protects nothing.
    The replica NetworkPolicy admits only the gateway pods (and Prometheus) on the replica port."""
    _, docs = rendered
    labels = {
        name: find_resource(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        for name in (REPLICA, GATEWAY)
    }
    for name in (REPLICA, GATEWAY):
        selector = find_resource(docs, "PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels[name].items()
    gateway_service = find_resource(docs, "Service", GATEWAY)
    assert gateway_service["spec"]["selector"].items() <= labels[GATEWAY].items()
    hpa = find_resource(docs, "HorizontalPodAutoscaler", REPLICA)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": REPLICA}
    assert "replicas" not in find_resource(docs, "Deployment", REPLICA)["spec"], "the HPA owns the count"
    policy = find_resource(docs, "NetworkPolicy", "aim-vllm-replica-ingress")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels[REPLICA].items()
    (rule,) = policy["ingress"]
    in_namespace = [peer for peer in rule["from"] if "namespaceSelector" not in peer]
    assert in_namespace == [
        {
            "podSelector": {
                "matchLabels": {
                    k: labels[GATEWAY][k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/component")
                }
            }
        }
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8001}]
