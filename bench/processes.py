"""The processes a benchmark talks to: AIM engine, plain vLLM engine, and the gateway.

- AIM engine: `aim-vllm engine` (through `commands.serve.start_replica`), AIM's defaults included.
- Plain engine: stock vLLM as a user runs it: vLLM's own API server entry with
  `AIM_VLLM_DISABLE=1`, the run's model flags and vLLM's own defaults for everything else (prefix
  caching, chunked prefill and its step budget, compilation, its scheduler), at the context
  length the AIM engine uses, so both admit the same requests.
- Gateway: `aim-vllm gateway` in its own process (as deployed), with timeouts long enough for
  CPU prefills of queued videos.
Every process gets its own process group and a log file in the run's log directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from aim_vllm.commands.engine import engine_argv
from aim_vllm.commands.serve import Replica, free_port, start_replica, stop_replicas, wait_ready

PLAIN_ENTRY = "vllm.entrypoints.launchers.api_server.entry"
DISABLE_ENV = "AIM_VLLM_DISABLE"
_LENGTH_FLAG = "--max-model-len"
_GATEWAY_START_S = 60.0
# vLLM kills the engine when one model step takes longer (default 300 s); a CPU prefill of a
# batch of videos (or any prefill on a loaded machine) can. Set for the engines we start, unless
# the caller set it.
_ENGINE_ENV_DEFAULTS = {"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "3600"}
# The gateway's limits on one request, raised: 16 queued CPU video prefills can take an hour.
_GATEWAY_TIMEOUT_S = 7200


def start_aim_engine(model: str, flags: list[str], log_dir: Path, index: int = 0) -> Replica:
    """`aim-vllm engine --model MODEL FLAGS` on a free local port (not yet ready).

    The engine inherits this process's environment, with `_ENGINE_ENV_DEFAULTS` filled in.
    """
    for name, value in _ENGINE_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return start_replica(index, model, flags, log_dir)


def plain_engine_argv(model: str, flags: list[str], port: int) -> list[str]:
    """Stock vLLM's arguments: the model, `flags`, and the AIM engine's context length unless
    `flags` set one (`aim-vllm engine` derives it from the checkpoint; vLLM's own default may be
    longer); nothing else of AIM's."""
    argv = ["--model", model, *flags, "--port", str(port), "--host", "127.0.0.1"]
    if not any(arg.split("=", 1)[0] == _LENGTH_FLAG for arg in flags):
        aim = engine_argv(["--model", model, *flags], None)
        if _LENGTH_FLAG in aim:
            argv += [_LENGTH_FLAG, aim[aim.index(_LENGTH_FLAG) + 1]]
    return argv


def start_plain_engine(
    model: str, flags: list[str], log_dir: Path, index: int = 1, env: dict[str, str] | None = None
) -> Replica:
    """Stock vLLM (plugin disabled) with the AIM engine's flags, on a free local port; `env`
    overrides this process's environment for it."""
    port = free_port()
    log_path = log_dir / f"plain-{index}.log"
    env = {**_ENGINE_ENV_DEFAULTS, **os.environ, **(env or {}), DISABLE_ENV: "1"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # what `aim-vllm engine` sets
    command = [sys.executable, "-m", PLAIN_ENTRY, *plain_engine_argv(model, flags, port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    return Replica(index, port, log_path, process)


def wait_engines(engines: list[Replica], timeout_s: float) -> None:
    wait_ready(engines, timeout_s)


def stop_engines(engines: list[Replica]) -> None:
    stop_replicas(engines, grace_s=30)


def gateway_command(upstream: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "aim_vllm.cli", "gateway", "--upstream", upstream, "--port", str(port),
        "--log-level", "warning", "--default-aim", "off",
        "--read-timeout-s", str(_GATEWAY_TIMEOUT_S), "--request-timeout-s", str(_GATEWAY_TIMEOUT_S),
    ]  # fmt: skip


def start_gateway(upstream: str, log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The gateway in front of `upstream`, ready when /ready answers 200; (process, base URL)."""
    port = free_port()
    with (log_dir / "gateway.log").open("wb") as log:
        process = subprocess.Popen(
            gateway_command(upstream, port), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + _GATEWAY_START_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/ready", timeout=1, trust_env=False).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_gateway(process)
    raise RuntimeError(f"the gateway did not become ready; see {log_dir / 'gateway.log'}")


def stop_gateway(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def served_model(url: str) -> str:
    """The first model name the engine at `url` serves."""
    return httpx.get(f"{url}/v1/models", timeout=30, trust_env=False).json()["data"][0]["id"]
