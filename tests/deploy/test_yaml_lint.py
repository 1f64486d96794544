"""yamllint (with .yamllint.yaml) over every YAML file of deploy/ and the lint configs: the
issue's lint gate for the compose file, Prometheus/Grafana provisioning and Kubernetes manifests."""

from __future__ import annotations

from pathlib import Path

import pytest
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.deploy.manifests import DEPLOY, REPO

CONFIG = REPO / ".yamllint.yaml"
FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), CONFIG, REPO / ".hadolint.yaml"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_yamllint_passes(path: Path) -> None:
    """Warnings count as failures too: an indentation slip in a manifest often still parses,
    into a different structure."""
    problems = list(linter.run(path.read_text(), YamlLintConfig(file=str(CONFIG)), str(path)))
    assert not problems, "\n".join(f"{path.name}:{p.line}:{p.column} {p.rule}: {p.message}" for p in problems)


def test_every_deploy_yaml_file_is_linted() -> None:
    """New files under deploy/ are picked up by the globs above (and none is skipped by the
    config's ignore list)."""
    config = YamlLintConfig(file=str(CONFIG))
    assert len(FILES) >= 15
    assert not [p for p in FILES if config.is_file_ignored(str(p.relative_to(REPO)))]
