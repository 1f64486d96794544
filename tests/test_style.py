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


def test_only_compat_imports_vllm_internals() -> None:
    """vLLM internals come from compat.py only; the plugin entry may `import vllm` to read its
    version first (before anything that could fail to import on an unsupported vLLM)."""
    for path in (ROOT / "aim_vllm").rglob("*.py"):
        if path.name == "compat.py" or "vllm" not in _imports(path):
            continue
        assert path.name == "plugin.py", f"{path.relative_to(ROOT)} imports vllm; go through compat.py"
        vllm_imports = [
            ast.unparse(node)
            for node in ast.walk(ast.parse(path.read_text()))
            if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "vllm" for a in node.names))
            or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vllm")
        ]
        assert set(vllm_imports) == {"import vllm"}, vllm_imports


def test_pruning_and_attention_never_import_models() -> None:
    """One direction: models/ use pruning/ and attention/, never the reverse (no import cycle)."""
    for package in ("pruning", "attention"):
        for path in (ROOT / "aim_vllm" / package).glob("*.py"):
            text = path.read_text()
            assert "aim_vllm.models" not in text, f"{path.relative_to(ROOT)} imports aim_vllm.models"
