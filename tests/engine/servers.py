"""Starting vLLM servers for engine tests: the AIM engine, and plain vLLM for comparison."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 900  # two cores shared with other tests: vLLM start-up can take minutes


@dataclass
class Server:
    url: str
    model: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(
    model_dir: Path, log: Path, *extra: str, plain: bool = False, env: dict[str, str | None] | None = None
) -> Server:
    """Start `aim-vllm engine` (or plain vLLM's API server with the plugin disabled) and wait for /health."""
    port = free_port()
    common = ["--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    if plain:
        cmd = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", *common]
        cmd += ["--enforce-eager", "--no-enable-prefix-caching", "--max-model-len", "8192"]
    else:
        cmd = [sys.executable, "-m", "aim_vllm.cli", "engine", *common]
    full_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: remove the variable
    if plain:
        full_env["AIM_VLLM_DISABLE"] = "1"
    handle = log.open("wb")
    process = subprocess.Popen([*cmd, *extra], stdout=handle, stderr=subprocess.STDOUT, env=full_env)
    server = Server(f"http://127.0.0.1:{port}", str(model_dir), process, log)
    _wait_healthy(server)
    return server


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{_tail(server.log)}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.stop()
    raise TimeoutError(f"server not healthy after {STARTUP_TIMEOUT_S}s:\n{_tail(server.log)}")


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
