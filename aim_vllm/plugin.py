"""Plugin registration, run by vLLM in every process (API server, engine core, workers)."""

from __future__ import annotations


def register_all() -> None:
    """Register AIM's model classes and patches with vLLM (idempotent)."""
