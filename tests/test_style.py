"""Repository-wide rules: ruff-clean, and the dependency boundaries the layout promises."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check() -> None:
    result = _ruff("check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_is_pure_torch() -> None:
    """aim_vllm/core never imports vLLM, transformers or web frameworks (checkable against the paper)."""
    for path in (ROOT / "aim_vllm" / "core").glob("*.py"):
        forbidden = _imports(path) & {"vllm", "transformers", "fastapi", "httpx", "server"}
        assert not forbidden, f"{path.name} imports {forbidden}"


def test_only_compat_and_glue_import_vllm_internals() -> None:
    """vLLM internals come from compat.py, the plugin entry (version check) and the CLI launcher only."""
    allowed = {"compat.py", "plugin.py", "engine.py"}
    for path in (ROOT / "aim_vllm").rglob("*.py"):
        if "vllm" in _imports(path) and path.name not in allowed:
            raise AssertionError(f"{path.relative_to(ROOT)} imports vllm; go through aim_vllm/compat.py")
