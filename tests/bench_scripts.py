"""Import a file of bench/ (scripts, not a package) as a module for tests."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(filename: str) -> types.ModuleType:
    """bench/<filename> executed as the module `bench_<stem>`."""
    path = BENCH_DIR / filename
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
