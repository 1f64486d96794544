"""Starting vLLM servers for engine tests: the AIM engine, and plain vLLM for comparison.

Uses `aim-vllm serve`'s replica helpers; plain vLLM is vLLM's own API server entry with the
plugin disabled (`AIM_VLLM_DISABLE=1`) and the flags `aim-vllm engine` would add.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aim_vllm.commands.serve import (
    ENGINE_CMD_ENV,
    Replica,
    free_port,
    start_replica,
    stop_replicas,
    wait_ready,
)

__all__ = ["Server", "free_port", "start"]

STARTUP_TIMEOUT_S = 900  # two cores shared with other tests: vLLM start-up can take minutes
PLAIN_VLLM = f"{sys.executable} -m vllm.entrypoints.launchers.api_server.entry"
PLAIN_FLAGS = [
    "--dtype",
    "float32",
    "--enforce-eager",
    "--no-enable-prefix-caching",
    "--max-model-len",
    "8192",
]


@dataclass
class Server:
    url: str
    model: str
    replica: Replica

    def stop(self) -> None:
        stop_replicas([self.replica], grace_s=60)


def start(
    model_dir: Path, log: Path, *extra: str, plain: bool = False, env: dict[str, str | None] | None = None
) -> Server:
    """Start `aim-vllm engine` (or plain vLLM) on `model_dir`, logging into `log`'s folder."""
    overrides: dict[str, str | None] = {"VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
    flags = ["--dtype", "float32", *extra]
    if plain:
        overrides |= {"AIM_VLLM_DISABLE": "1", ENGINE_CMD_ENV: PLAIN_VLLM}
        flags = [*PLAIN_FLAGS, *extra]
    log.parent.mkdir(parents=True, exist_ok=True)
    with _environment(overrides):
        replica = start_replica(0, str(model_dir), flags, log.parent)
    try:
        wait_ready([replica], STARTUP_TIMEOUT_S)
    except BaseException:
        stop_replicas([replica], grace_s=10)
        raise
    return Server(replica.url, str(model_dir), replica)


@contextlib.contextmanager
def _environment(overrides: dict[str, str | None]) -> Iterator[None]:
    """Set (value) or remove (None) variables for the child being started, then restore."""
    saved = {key: os.environ.get(key) for key in overrides}
    try:
        for key, value in overrides.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
