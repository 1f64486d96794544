"""Starting vLLM servers for engine tests: the AIM engine, and plain vLLM for comparison.

Uses `aim-vllm serve`'s replica helpers; plain vLLM is vLLM's own API server entry with the
plugin disabled (`AIM_VLLM_DISABLE=1`) and vLLM's own defaults (prefix caching, chunked prefill),
at the AIM engine's context length.
Compilation: the session's AIM engine and the plain engine it is compared with run compiled, as
vLLM and `aim-vllm engine` do by default (most engine tests use them); every other engine
(per-architecture, tensor-parallel, special-purpose) runs `--enforce-eager`: each compiles its own
graph on start-up otherwise, about a minute for the tiny model and several for published widths
on two cores, and the forward paths under test are the same.
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

__all__ = ["Server", "free_port", "start", "start_tensor_parallel", "with_test_site"]

TEST_SITE = Path(__file__).resolve().parents[1] / "vllm_site"
STARTUP_TIMEOUT_S = 900  # two cores shared with other tests: vLLM start-up can take minutes
PLAIN_VLLM = f"{sys.executable} -m vllm.entrypoints.launchers.api_server.entry"
PLAIN_FLAGS = ["--dtype", "float32", "--max-model-len", "8192"]


@dataclass
class Server:
    url: str
    model: str
    replica: Replica

    def stop(self) -> None:
        stop_replicas([self.replica], grace_s=60)


def start(
    model_dir: Path,
    log: Path,
    *extra: str,
    plain: bool = False,
    env: dict[str, str | None] | None = None,
    compiled: bool = False,
) -> Server:
    """Start `aim-vllm engine` (or plain vLLM) on `model_dir`, logging into `log`'s folder.

    `env`: variables to set (value) or remove (None) for the server, applied last; `compiled`:
    vLLM's torch.compile as by default (else `--enforce-eager`, module docstring).
    """
    overrides: dict[str, str | None] = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    eager = [] if compiled else ["--enforce-eager"]
    flags = ["--dtype", "float32", *eager, *extra]
    if plain:
        overrides |= {"AIM_VLLM_DISABLE": "1", ENGINE_CMD_ENV: PLAIN_VLLM}
        flags = [*PLAIN_FLAGS, *eager, *extra]
    overrides |= env or {}
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


def start_tensor_parallel(model_dir: Path, log: Path, *extra: str, ranks: int = 2) -> Server:
    """`aim-vllm engine` with `ranks` tensor-parallel workers, one core each (one NUMA node here:
    vLLM's `auto` binding refuses it)."""
    binding = "|".join(str(core % (os.cpu_count() or 1)) for core in range(ranks))
    flags = ["--tensor-parallel-size", str(ranks), *extra]
    return start(model_dir, log, *flags, env={"VLLM_CPU_OMP_THREADS_BIND": binding})


def with_test_site(**variables: str) -> dict[str, str | None]:
    """Environment for a server whose processes load `tests/vllm_site` (see its docstring)."""
    path = os.pathsep.join(filter(None, [str(TEST_SITE), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, **variables}


@contextlib.contextmanager
def running_gateway(*upstreams: str, **settings: object) -> Iterator[str]:
    """The gateway over `upstreams` (AIM off by default, no keys), served by uvicorn in a thread."""
    import threading
    import time

    import uvicorn

    from server.app import create_app
    from server.config import Settings

    config = Settings(
        upstreams=list(upstreams), upstream_dns=None, default_aim="off", api_keys=[], **settings
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host="127.0.0.1",
            port=free_port(),
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
