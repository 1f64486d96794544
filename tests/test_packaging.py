"""The install gives what pyproject promises, and CI runs exactly the README's commands."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def test_declared_dependencies_are_installed() -> None:
    """Every runtime and dev requirement of aim-vllm is satisfied by the installed environment."""
    for line in importlib.metadata.requires("aim-vllm") or []:
        req = Requirement(line)
        extra = req.marker and "extra ==" in str(req.marker)
        if extra and "dev" not in str(req.marker):
            continue  # cpu/cuda engine extras: the install script provides the engine
        version = importlib.metadata.version(req.name)
        assert req.specifier.contains(version, prereleases=True), (
            f"{req.name} {version} does not satisfy {req}"
        )


def test_ci_runs_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    quick_start = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in quick_start.splitlines() if line.strip()]
    assert ci == [commands[0], commands[2]]  # install and test; serve is the interactive main job


def test_console_script_and_plugin_entry_point() -> None:
    dist = importlib.metadata.distribution("aim-vllm")
    points = {(e.group, e.name): e.value for e in dist.entry_points}
    assert points[("console_scripts", "aim-vllm")] == "aim_vllm.cli:main"
    assert points[("vllm.general_plugins", "aim_vllm")] == "aim_vllm:register"
