"""Readers for the deploy files, shared by tests/deploy (no Docker engine or kustomize needed).

- `parse_dockerfile`: instructions per build stage, continuation lines joined, comments dropped.
- `load_yaml_docs`: every YAML document of a file.
- `interpolate_compose`: compose's `${VAR:-default}` substitution with the defaults (empty env).
- `render_kustomization`: a small stand-in for `kustomize build` covering exactly what deploy/k8s
  uses (resources, strategic-merge patches keyed by `name`, `images`, `namespace`). It
  approximates kustomize; only a real `kubectl apply -k` is authoritative.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Instruction:
    keyword: str  # upper-case, e.g. "RUN"
    args: str  # the rest of the logical line, continuations joined

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of ENTRYPOINT/CMD/SHELL; ValueError if shell form."""
        value = json.loads(self.args)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self.keyword} is not in exec form: {self.args}")
        return value


@dataclass
class Stage:
    base: str  # the FROM image or stage reference, unexpanded
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]  # ARGs before the first FROM, with their defaults
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}")


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue  # comments (and parser directives) never end a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages and keyword == "ARG":
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return Dockerfile(global_args, stages)


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


_COMPOSE_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate_compose(value: Any) -> Any:
    """Substitute `${VAR}` / `${VAR:-default}` as compose does with VAR unset."""
    if isinstance(value, str):
        return _COMPOSE_VAR.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, dict):
        return {k: interpolate_compose(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_compose(v) for v in value]
    return value


# ---- kustomize stand-in ----------------------------------------------------------------------------

CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "StorageClass"}


def load_kustomization(directory: Path) -> dict[str, Any]:
    (doc,) = load_yaml_docs(directory / "kustomization.yaml")
    return doc


def kustomization_paths(directory: Path) -> list[Path]:
    """Every path a kustomization refers to: resources (files or directories) and patches."""
    kustomization = load_kustomization(directory)
    paths = [directory / r for r in kustomization.get("resources", [])]
    paths += [directory / p["path"] for p in kustomization.get("patches", [])]
    return paths


def strategic_merge(base: Any, patch: Any) -> Any:
    """Strategic-merge `patch` into `base`: maps merge, `null` deletes a key, lists whose items all
    carry a `name` merge item by item (containers, volumes, env), any other list is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value)
            else:
                merged[key] = strip_nulls(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged_list = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in index:
                merged_list[index[item["name"]]] = strategic_merge(merged_list[index[item["name"]]], item)
            else:
                merged_list.append(strip_nulls(item))
        return merged_list
    return strip_nulls(patch)


def strip_nulls(value: Any) -> Any:
    """A patch as a plain manifest: drop the `key: null` deletion directives."""
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    kustomization = load_kustomization(directory)
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        docs += render_kustomization(path) if path.is_dir() else load_yaml_docs(path)
    for entry in kustomization.get("patches", []):
        (patch,) = load_yaml_docs(directory / entry["path"])
        i = find_resource_index(docs, patch["kind"], patch["metadata"]["name"])
        docs[i] = strategic_merge(docs[i], patch)
    for image in kustomization.get("images", []):
        for doc in docs:
            for container in pod_containers(doc):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


def find_resource_index(docs: list[dict[str, Any]], kind: str, name: str) -> int:
    for i, doc in enumerate(docs):
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return i
    raise KeyError(f"no {kind}/{name} among the rendered resources")


def find_resource(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return docs[find_resource_index(docs, kind, name)]
