"""`aim-vllm eval`: accuracy vs LLM-prefill FLOPs of AIM levels and baselines, from one run.

Sends every item of a JSONL data set (format: `aim_vllm.synthetic` docstring; make one with
`aim-vllm make-synthetic-data`) through the gateway at each level, scores the answers
(multiple-choice letter, or normalised short answer with --free-form), and writes results.jsonl
(resumable), summary.json, summary.md and accuracy_vs_flops.png into --out.

How sure the results are: every level is compared with `off` (or the first level without it) on
the same items: the paired difference, its 95% interval (paired bootstrap) and McNemar's exact
p-value, with a verdict that reads the interval ("no loss beyond 5 points" when its lower end is
above -0.05), never "within off's interval" (`aim_vllm.evaluation.paired`).
  --compare A B     also compares level A with level B (repeatable), into summary.md/paired.json.
  --seeds N         the spread over N item resamples (seeds 0..N-1): accuracy and difference sd
                    and percentiles per level, and how often the ranking of the levels holds.
                    Resampling the answered items costs nothing; retraining or new data seeds
                    would cost a training or an engine run each, and the item bootstrap estimates
                    the same data-set-to-data-set spread for a model.

Levels: one per argument, in the gateway's level grammar (`X-AIM-Level`), e.g.
  --levels off light balanced max budget:0.1 merge:0.25,method:pool,prune:3-5
  --baselines-for balanced   adds AIM at that preset and every baseline at its token counts.
Target: --url of a running gateway, or --model DIR to start `aim-vllm serve` for the run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="items.jsonl")
    parser.add_argument(
        "--levels", nargs="+", default=["off", "light", "balanced", "max"], help="AIM levels (level grammar)"
    )
    parser.add_argument(
        "--baselines-for", metavar="PRESET", help="add AIM at PRESET + baselines at its counts"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running gateway (e.g. http://127.0.0.1:8000)")
    target.add_argument("--model", help="start `aim-vllm serve --model MODEL` for the run")
    parser.add_argument("--served-model-name", help="model name in requests (default: the gateway's first)")
    parser.add_argument(
        "--model-config", type=Path, help="config.json of the served model (for --baselines-for)"
    )
    parser.add_argument("--limit", type=int, help="first N items only")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--free-form", action="store_true", help="score short answers, not letters")
    parser.add_argument(
        "--compare",
        nargs=2,
        action="append",
        default=[],
        metavar=("LEVEL", "REFERENCE"),
        help="also compare LEVEL with REFERENCE on their shared items (repeatable)",
    )
    parser.add_argument(
        "--seeds", type=int, default=0, help="report the spread over N item resamples (default: none)"
    )


def run(args: argparse.Namespace) -> int:
    import asyncio

    from tqdm import tqdm

    from aim_vllm.evaluation.levels import canonical_levels
    from aim_vllm.evaluation.report import markdown, plot, summarise
    from aim_vllm.evaluation.runner import done_keys, run_all
    from aim_vllm.synthetic import read_dataset

    levels, names = canonical_levels(args.levels), {}
    pairs = [tuple(canonical_levels([level])[0] for level in pair) for pair in args.compare]
    levels += [level for pair in pairs for level in pair if level not in levels]
    if args.seeds < 0:
        raise ValueError(f"--seeds must be >= 0, got {args.seeds}")
    items = read_dataset(args.data)[: args.limit]
    args.out.mkdir(parents=True, exist_ok=True)
    server = _start_serve(args.model, args.out) if args.model else None
    url = args.url or (f"http://127.0.0.1:{server[1]}" if server else "http://127.0.0.1:8000")
    try:
        model = args.served_model_name or _first_model(url)
        if args.baselines_for:
            config = args.model_config or Path(args.model or model) / "config.json"
            extra = _baselines(args.baselines_for, url, model, items, args.data.parent, config)
            names.update({level: name for name, level in extra.items()})
            levels += [level for level in extra.values() if level not in levels]
        results = args.out / "results.jsonl"
        todo = len(items) * len(levels) - len(done_keys(results))
        with tqdm(total=max(0, todo), desc="eval", unit="answer") as bar:
            asyncio.run(
                run_all(
                    url,
                    model,
                    items,
                    args.data.parent,
                    levels,
                    results,
                    args.concurrency,
                    args.free_form,
                    bar,
                )
            )
    finally:
        if server:
            server[0].terminate()
            server[0].wait(timeout=120)
    rows = summarise(results, levels, names)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2))
    table = "\n\n".join([markdown(rows), *_paired_sections(results, levels, names, pairs, args.seeds)])
    (args.out / "summary.md").write_text(table + "\n")
    plot(rows, args.out / "accuracy_vs_flops.png")
    print(table)
    return 0


def _paired_sections(
    results: Path, levels: list[str], names: dict[str, str], pairs: list, seeds: int
) -> list[str]:
    """The --compare and --seeds tables (also written to paired.json); none if neither was asked."""
    from aim_vllm.evaluation.paired import resample_spread
    from aim_vllm.evaluation.report import (
        comparisons,
        comparisons_markdown,
        hits_of,
        load_results,
        reference_level,
        spread_markdown,
    )

    if not pairs and not seeds:
        return []
    sections, record = [], {}
    if pairs:
        compared = comparisons(results, pairs)
        record["comparisons"] = [c.to_json() for c in compared]
        sections.append(comparisons_markdown(compared))
    if seeds:
        hits = hits_of(load_results(results, levels))
        record["spread"] = resample_spread(hits, reference_level(levels), seeds)
        sections.append(spread_markdown(record["spread"], names))
    out = results.parent / "paired.json"
    out.write_text(json.dumps(record, indent=2))
    return sections


def _first_model(url: str) -> str:
    import httpx

    return httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]


def _start_serve(model: str, out: Path) -> tuple[subprocess.Popen, int]:
    """`aim-vllm serve --model MODEL` on a free port; waits for /ready."""
    import httpx

    from aim_vllm.commands.serve import free_port

    port = free_port()
    log = (out / "serve.log").open("wb")
    cmd = [sys.executable, "-m", "aim_vllm.cli", "serve", "--model", model, "--port", str(port)]
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"aim-vllm serve exited with {process.returncode}; see {out / 'serve.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return process, port
        except httpx.HTTPError:
            pass
        time.sleep(2)
    process.terminate()
    raise TimeoutError(f"aim-vllm serve not ready after 30 min; see {out / 'serve.log'}")


def _baselines(
    preset: str, url: str, model: str, items: list[dict], root: Path, config: Path
) -> dict[str, str]:
    """Baselines at the token counts of `preset`, matched on a representative item of the data set."""
    import asyncio

    import httpx

    from aim_vllm.core.budget import VisualLayout
    from aim_vllm.core.flops import LLMShape
    from aim_vllm.evaluation.levels import baselines_for
    from aim_vllm.evaluation.runner import ask, content_parts

    async def probe() -> dict:
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            return (await ask(client, model, items[0], content_parts(items[0], root), "off", False)).aim

    aim = asyncio.run(probe())
    if not aim:
        raise ValueError("the engine reported no usage.aim for the probe item (is the AIM plugin running?)")
    if not config.exists():
        raise ValueError(
            f"--baselines-for needs the served model's config.json: give --model-config ({config})"
        )
    shape = LLMShape.from_hf_config(json.loads(config.read_text()))
    layout = VisualLayout((aim["visual_tokens_in"],))  # FLOPs matching on the probe's visual count
    return baselines_for(preset, shape, layout, aim["text_tokens"])
