"""`aim-vllm serve`: vLLM replica(s) with the AIM plugin and the gateway, in one command.

    aim-vllm serve [--model PATH] [--replicas N] [--host H] [--port P] [gateway flags] [-- vLLM flags]

1. Starts N `aim-vllm engine` processes (the embedded model unless --model is given: the tiny
   LLaVA-OneVision trained on synthetic colour QA, trained here once if not cached) on free
   ports of 127.0.0.1 (replicas must only be reachable through the gateway), each in its own
   process group, logging to <log dir>/replica-<i>.log. Flags after `--` go to every engine.
2. Waits until every replica's /health answers; on --startup-timeout or an early exit the error
   shows that replica's last log lines.
3. Runs the gateway on --host/--port (default 127.0.0.1:8000) and prints its URL.
4. Ctrl-C or SIGTERM stops the gateway, then terminates every replica's process group, waits
   --grace-period seconds and kills what is left.

Gateway settings work as for `aim-vllm gateway` (flags or AIM_GW_* variables), except the
replicas: the gateway uses exactly the ones serve started (AIM_GW_UPSTREAMS and
AIM_GW_UPSTREAM_DNS are ignored).
`AIM_SERVE_ENGINE_CMD` replaces the engine command (tests start a tiny fake server with it).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aim_vllm.commands.gateway import (
    add_gateway_arguments,
    interrupt_on_sigterm,
    serve_gateway,
    settings_from_args,
)

logger = logging.getLogger(__name__)

ENGINE_CMD_ENV = "AIM_SERVE_ENGINE_CMD"
_TAIL_LINES = 20
_POLL_S = 0.5
# Flags serve sets itself on each engine.
_RESERVED_ENGINE_FLAGS = ("--port", "--host")


class ServeError(RuntimeError):
    """A replica failed to start; the message includes its last log lines."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="model path or name (default: the embedded model, trained on synthetic colour QA)"
    )
    parser.add_argument("--replicas", type=int, default=1, help="number of vLLM engines")
    parser.add_argument("--startup-timeout", type=float, default=900.0, help="seconds to wait for readiness")
    parser.add_argument(
        "--grace-period", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL"
    )
    parser.add_argument("--log-dir", type=Path, help="where replica logs go (default: a new temp dir)")
    add_gateway_arguments(parser)
    parser.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then flags for every vLLM engine")


@dataclass
class Replica:
    """One engine process."""

    index: int
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = _TAIL_LINES) -> str:
        try:
            with self.log_path.open(errors="replace") as log:
                return "".join(deque(log, maxlen=lines)).rstrip()
        except OSError:
            return "(no log)"


def engine_command(port: int, model: str | None, vllm_args: list[str]) -> list[str]:
    """The command line of one engine (AIM_SERVE_ENGINE_CMD replaces `python -m aim_vllm.cli engine`)."""
    override = os.environ.get(ENGINE_CMD_ENV)
    base = shlex.split(override) if override else [sys.executable, "-m", "aim_vllm.cli", "engine"]
    model_args = ["--model", model] if model else []
    return [*base, *model_args, "--port", str(port), "--host", "127.0.0.1", *vllm_args]


def engine_flags(vllm_args: list[str]) -> list[str]:
    """The flags after `--`, refusing those serve sets itself."""
    flags = vllm_args[1:] if vllm_args[:1] == ["--"] else list(vllm_args)
    for flag in flags:
        if flag.split("=", 1)[0] in _RESERVED_ENGINE_FLAGS:
            raise ValueError(
                f"{flag.split('=', 1)[0]} is chosen by `aim-vllm serve`; remove it from the vLLM flags"
            )
        if flag.split("=", 1)[0] == "--model":
            raise ValueError("give the model as `aim-vllm serve --model PATH`, before `--`")
        if flag.split("=", 1)[0] == "--aim-default":  # the gateway sends every request a level
            raise ValueError(
                "the gateway in front decides the level of requests that name none: give it as "
                "`aim-vllm serve --default-aim LEVEL`, before `--`"
            )
    return flags


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_replica(index: int, model: str | None, vllm_args: list[str], log_dir: Path) -> Replica:
    port = free_port()
    log_path = log_dir / f"replica-{index}.log"
    command = engine_command(port, model, vllm_args)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    logger.info("replica %d: pid %d, port %d, log %s", index, process.pid, port, log_path)
    return Replica(index, port, log_path, process)


def wait_ready(replicas: list[Replica], timeout_s: float) -> None:
    """Block until every replica's /health answers 200 (ServeError on exit or timeout)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    waiting = list(replicas)
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while waiting:
            for replica in list(waiting):
                if replica.process.poll() is not None:
                    raise ServeError(_failure(replica, f"exited with code {replica.process.returncode}"))
                if _healthy(client, replica):
                    logger.info("replica %d is ready at %s", replica.index, replica.url)
                    waiting.remove(replica)
            if waiting and time.monotonic() > deadline:
                raise ServeError(_failure(waiting[0], f"did not become healthy within {timeout_s:g} s"))
            if waiting:
                time.sleep(_POLL_S)


def _healthy(client: Any, replica: Replica) -> bool:
    import httpx

    try:
        return client.get(f"{replica.url}/health").status_code == 200
    except httpx.HTTPError:
        return False


def _failure(replica: Replica, what: str) -> str:
    return (
        f"replica {replica.index} ({replica.url}) {what}; last lines of {replica.log_path}:\n{replica.tail()}"
    )


def stop_replicas(replicas: list[Replica], grace_s: float) -> None:
    """SIGTERM every replica's process group, wait up to `grace_s`, then SIGKILL the rest."""
    for replica in replicas:
        _signal_group(replica, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for replica in replicas:
        try:
            replica.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("replica %d ignored SIGTERM for %g s; killing it", replica.index, grace_s)
        # Also kills children the engine left behind: a process group id stays reserved (never
        # reused as a pid) while any member is alive.
        _signal_group(replica, signal.SIGKILL)
        replica.process.wait()


def _signal_group(replica: Replica, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
        os.killpg(replica.process.pid, sig)


def gateway_settings(args: argparse.Namespace, upstreams: list[str]) -> Any:
    """The gateway's settings: flags and AIM_GW_* variables, with serve's own replicas only."""
    return settings_from_args(args, upstreams=upstreams, upstream_dns=None)


def _prepare_embedded_model() -> None:
    """Train the embedded model now if it is not cached, so replicas start on a finished one."""
    from aim_vllm.model_builders import trained_model_dir
    from aim_vllm.training import TrainConfig

    logger.info(
        "embedded model: the tiny LLaVA-OneVision trained on synthetic colour QA "
        "(first use trains it once: %d CPU steps, up to %d while its held-out probe is below target; "
        "about 7-10 minutes on 2 cores)",
        TrainConfig().total_steps,
        TrainConfig().total_steps + TrainConfig().extra_steps,
    )
    logger.info("embedded model ready: %s", trained_model_dir())


def run(args: argparse.Namespace) -> int:
    if args.replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {args.replicas}")
    vllm_args = engine_flags(args.vllm_args)
    gateway_settings(args, ["http://127.0.0.1:1"])  # fail on bad gateway flags before starting engines
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="aim-vllm-serve-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    from server.log import configure_logging

    configure_logging(args.log_level)
    interrupt_on_sigterm()
    if args.model is None and ENGINE_CMD_ENV not in os.environ:
        _prepare_embedded_model()
    replicas: list[Replica] = []
    try:
        for index in range(args.replicas):
            replicas.append(start_replica(index, args.model, vllm_args, log_dir))
        wait_ready(replicas, args.startup_timeout)
        settings = gateway_settings(args, [replica.url for replica in replicas])
        serve_gateway(settings, args.host, args.port, args.log_level, on_started=lambda: _announce(args))
    except ServeError as exc:
        print(f"aim-vllm serve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        logger.info("stopping")
    finally:
        try:
            stop_replicas(replicas, args.grace_period)
        except KeyboardInterrupt:  # a second Ctrl-C: no more grace
            stop_replicas(replicas, 0.0)
    return 0


def _announce(args: argparse.Namespace) -> None:
    print(f"aim-vllm serve: ready, OpenAI API at http://{args.host}:{args.port}/v1", flush=True)
