"""Shared fixtures: the embedded tiny model (built once into the cache) and sandboxed caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# vLLM writes caches (model info, compile artefacts) here; keep them out of the user's home.
os.environ.setdefault(
    "VLLM_CACHE_ROOT", str(Path(os.environ.get("TMPDIR", "/tmp")) / "aim-vllm-test-vllm-cache")
)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The embedded default model (tiny random-weight LLaVA-OneVision), cached across runs."""
    from aim_vllm.model_builders import default_model_dir

    return default_model_dir()
