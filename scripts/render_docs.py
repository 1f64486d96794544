"""Render every table of measured figures in README.md and docs/*.md from its results file.

    .venv/bin/python scripts/render_docs.py           # rewrite the marked regions in place
    .venv/bin/python scripts/render_docs.py --check   # exit 1 and name the regions that differ

A table lives between two markers, and nothing between them is written by hand:

    <!-- results:STEM/KIND -->
    ...rendered...
    <!-- /results:STEM/KIND -->

STEM names `docs/results/STEM.json`; KIND is one of `RENDERERS` (how that file's shape becomes a
table). A rerun that overwrites a results file is picked up by running this script again; a new
results file of a known shape needs only a region naming it (and a line in `COMMANDS`).
`summary/table` is the README's summary, one row per `SUMMARY` entry, each taken from its file.
`tests/test_docs.py` fails when a region differs from what this script renders.

Run facts that a results file does not hold (the eval and pure-torch files record no date or
machine) come from `PROVENANCE`: the date of the commit that added the file and the machine its
companion `.md` names. Some results were kept only as Markdown; `--from-md FILE.md` derives a
JSON from such a file once (the summary table `aim-vllm eval` writes, or the JSON line
`bench/gateway_overhead.py` prints), with the figures exactly as the Markdown shows them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
DOCUMENTS = ("README.md", "docs/*.md")
_REGION = re.compile(r"(<!-- results:(\S+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)

# The command that wrote each results file (the bench's own settings are also in its "meta").
COMMANDS = {
    "bench-0.5b-video8": (
        "aim-vllm bench --dtype float32 --media video8 --concurrency 1 --levels merge prune balanced "
        "--rounds 2 --waves 1 --split-pairs 1 --max-tokens 8"
    ),
    "bench-0.5b-video16": (
        "aim-vllm bench --dtype float32 --media video16 --concurrency 1 --levels balanced max "
        "--rounds 1 --waves 1 --split-pairs 1 --max-tokens 8 --seed 20000"
    ),
    "bench-0.5b-video16-defaults": (
        "aim-vllm bench --dtype float32 --media video16 --concurrency 1 --levels balanced --rounds 1 "
        "--waves 1 --split-pairs 1 --max-tokens 8 --seed 20000"
    ),
    "bench-0.5b-encoder": (
        "aim-vllm bench --dtype float32 --media video8 video16 --concurrency 1 --levels balanced "
        "balanced,encoder:0.5 balanced,encoder:0.25 --rounds 1 --waves 1 --split-pairs 1 --max-tokens "
        "8"
    ),
    "bench-0.5b-image": (
        "aim-vllm bench --dtype float32 --media image --concurrency 1 4 --levels balanced max "
        "budget:0.1 --rounds 1 --waves 1 --split-pairs 1 --max-tokens 8"
    ),
    "bench-0.5b-image-c16": (
        "aim-vllm bench --dtype float32 --media image --concurrency 16 --levels balanced max --rounds "
        "1 --waves 1 --split-pairs 0 --max-tokens 8 --seed 30000"
    ),
    "evs-qwen2.5-vl-3b-12l": (
        "aim-vllm bench --evs 0.75 --model DIR --dummy --dtype float32 --media video8 video16 "
        "--concurrency 1 4 --rounds 2 --waves 1 --split-pairs 1 --max-tokens 8"
    ),
    "evs-encoder-qwen2.5-vl-3b-12l": (
        "aim-vllm bench --evs 0.75 --evs-encoder 0.5 --model DIR --dummy --dtype float32 --media "
        "video8 --concurrency 1 4 --rounds 1 --waves 1 --split-pairs 1 --max-tokens 8 --frame-size "
        "224"
    ),
    "evs-encoder16-qwen2.5-vl-3b-12l": (
        "aim-vllm bench --evs 0.75 --evs-encoder 0.5 --model DIR --dummy --dtype float32 --media "
        "video16 --concurrency 1 4 --rounds 1 --waves 1 --split-pairs 1 --max-tokens 8 --frame-size "
        "224"
    ),
    "evs-vidcom2-qwen3-vl-8b-12l": (
        "aim-vllm make-tiny-model DIR --arch qwen3-vl --size 8b --layers 12 --vision-layers 9; aim-vllm "
        "bench --evs 0.75 --evs-methods evs vidcom2 --evs-encoder 0.5 --model DIR --dummy --concurrency "
        "1 4 --rounds 1 --waves 1 --split-pairs 1 --max-tokens 8 -- --max-model-len 16384 "
        "--skip-mm-profiling"
    ),
    "evs-vidcom2-qwen3-vl-8b-12l-2rounds": (
        "aim-vllm make-tiny-model DIR --arch qwen3-vl --size 8b --layers 12 --vision-layers 9; aim-vllm "
        "bench --evs 0.75 --evs-methods evs vidcom2 --evs-encoder 0.5 --evs-levels aim-tokens "
        "aim-tokens+encoder --model DIR --dummy --concurrency 1 4 --rounds 2 --waves 1 --split-pairs 1 "
        "--max-tokens 8 -- --max-model-len 16384 --skip-mm-profiling"
    ),
    "evs-encoder-qwen2.5-vl-3b": (
        "aim-vllm bench --evs 0.75 --evs-encoder 0.5 --model DIR --dummy --dtype bfloat16 --media "
        "video8 --concurrency 1 4 --rounds 1 --waves 1 --split-pairs 1 --max-tokens 8 --frame-size "
        "224"
    ),
    "evs-encoder16-qwen2.5-vl-3b": (
        "aim-vllm bench --evs 0.75 --evs-encoder 0.5 --model DIR --dummy --dtype bfloat16 --media "
        "video16 --concurrency 1 4 --rounds 1 --waves 1 --split-pairs 1 --max-tokens 8 --frame-size "
        "224"
    ),
    "plugin-overhead-0.5b-defaults": (
        "aim-vllm bench --plugin-overhead --model DIR --dummy --dtype float32 --media image "
        "--concurrency 4 --waves 1 --rounds 2 --max-tokens 32"
    ),
    "plugin-overhead-0.5b": (
        "aim-vllm bench --plugin-overhead --model DIR --dummy --dtype float32 --media image "
        "--image-size 128 --concurrency 1 4 --waves 3 --rounds 2 --max-tokens 48"
    ),
    "plugin-overhead-qwen2.5-vl-3b-12l": (
        "aim-vllm bench --plugin-overhead --model DIR --dummy --dtype float32 --media video8 "
        "--concurrency 1 4 --rounds 2 --waves 1 --max-tokens 8 --frame-size 224"
    ),
    "plugin-overhead-tiny": (
        "aim-vllm bench --plugin-overhead --quick --media image video8 --concurrency 1 4 --waves 24 "
        "--rounds 4"
    ),
    "kv-memory-0.5b": "python bench/kv_memory.py --out runs/kv-memory.json",
    "flops-table": "python bench/flops_table.py --json",
    "gpu-prefill-cpu-0.5b": (
        "python bench/gpu_prefill.py --device cpu --shape llava-onevision-0.5b --frames 32 --dtype "
        "float32 --repeats 3 --warmup 1"
    ),
    "eval-local-small": (
        "aim-vllm eval --data runs/data-colour-small/items.jsonl --model <local> --concurrency 4 "
        "--baselines-for balanced --levels off light balanced max budget:0.1 budget:0.05 merge:0.05 "
        "merge:0.05,method:pool merge:0.05,method:random"
    ),
    "eval-colour-small": (
        "aim-vllm eval --data runs/data-colour-small/items.jsonl --model <colour> --concurrency 4 "
        "--baselines-for balanced --levels off light balanced max budget:0.1 budget:0.05 merge:0.05 "
        "merge:0.05,method:pool merge:0.05,method:random"
    ),
    "eval-encoder-local": (
        "aim-vllm eval --data runs/data-colour-small/items.jsonl --model <local> --concurrency 4 "
        "--levels off balanced encoder:0.5 encoder:0.25 encoder:0.1 encoder:0.05 "
        "merge:0.25,prune:3-5,encoder:0.5 merge:0.25,prune:3-5,encoder:0.25 merge:0.05 "
        "merge:0.05,encoder:0.25"
    ),
    "eval-encoder-colour": "the same as eval-encoder-local, with --model <colour>",
    "docker-smoke": "bash deploy/smoke.sh (run by pytest -m docker tests/deploy/test_smoke.py, clean clone)",
    "gateway-overhead-trivial": (
        ".venv/bin/python bench/gateway_overhead.py --upstream trivial --starlette --relay --requests 6000 "
        "--concurrency 8 --rounds 12"
    ),
    "eval-paired-local": (
        "aim-vllm make-synthetic-data DATA --n 96 --types colour --colour-size 16,24 --seed 7; "
        "aim-vllm train-synthetic --recipe local; aim-vllm eval --data DATA/items.jsonl --model <local> "
        "--levels off balanced merge:0.05 merge:0.05,method:pool --compare merge:0.05,method:pool "
        "merge:0.05 --compare merge:0.05 balanced --seeds 200"
    ),
    "eval-colour": "the same as eval-colour-small, on items with training-size shapes (56-95 px)",
    "eval-paired-local-avx512": (
        "aim-vllm make-synthetic-data DATA --n 96 --types colour --colour-size 16,24 --seed 7; "
        "aim-vllm train-synthetic --recipe local; aim-vllm eval --data DATA/items.jsonl --model <local> "
        "--levels off balanced merge:0.05 merge:0.05,method:pool --compare merge:0.05,method:pool "
        "merge:0.05 --compare merge:0.05 balanced --seeds 200"
    ),
    "eval-paired-local-avx2-capped": (
        "aim-vllm make-synthetic-data DATA --n 96 --types colour --colour-size 16,24 --seed 7; "
        "ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 "
        "aim-vllm train-synthetic MODEL --recipe local; aim-vllm eval --data DATA/items.jsonl --model MODEL "
        "--levels off balanced merge:0.05 merge:0.05,method:pool --compare merge:0.05,method:pool "
        "merge:0.05 --compare merge:0.05 balanced --seeds 200"
    ),
    "eval-paired-local-288-avx512": (
        "aim-vllm make-synthetic-data DATA --n 288 --types colour --colour-size 16,24 --seed 11; "
        "aim-vllm train-synthetic --recipe local; aim-vllm eval --data DATA/items.jsonl --model <local> "
        "--levels off balanced merge:0.05 merge:0.05,method:pool --compare merge:0.05,method:pool "
        "merge:0.05 --compare merge:0.05 balanced --seeds 200"
    ),
    "eval-position-gradeable": (
        "aim-vllm make-synthetic-data DATA --n 288 --types position --seed 5151; aim-vllm "
        "train-synthetic --recipe qwen-position MODEL; aim-vllm eval --data DATA/items.jsonl --model "
        "MODEL --concurrency 4 --levels off balanced merge:0.25 merge:0.05 merge:0.05,method:pool "
        "merge:0.05,method:random --compare merge:0.05,method:pool merge:0.05 --compare "
        "merge:0.05,method:random merge:0.05 --seeds 200"
    ),
    "eval-paired-colour-288-avx512": (
        "aim-vllm make-synthetic-data DATA --n 288 --types colour --seed 13; aim-vllm train-synthetic "
        "--recipe embedded; aim-vllm eval --data DATA/items.jsonl --model <embedded> --levels off "
        "balanced merge:0.05 merge:0.05,method:pool --compare merge:0.05,method:pool merge:0.05 "
        "--seeds 200"
    ),
    "eval-position-qwen": (
        "aim-vllm make-synthetic-data DATA --n 128 --types position --seed 4242; aim-vllm "
        "train-synthetic --recipe qwen-position MODEL; aim-vllm eval --data DATA/items.jsonl --model "
        "MODEL --levels off merge:0.25 merge:0.125 --concurrency 4"
    ),
    "eval-position-qwen-spread": (
        "the same as eval-position-qwen, with `AIM_VLLM_SPREAD_POSITIONS=1` in the environment "
        "(merged tokens keep count-based positions)"
    ),
    "eval-position-qwen-compare": (
        "python scripts/compare_eval_runs.py <eval-position-qwen> <eval-position-qwen-spread> --levels "
        "off merge:0.25 merge:0.125 --names content-aware spread"
    ),
    "eval-qwen3-colour": (
        "aim-vllm make-synthetic-data DATA --n 192 --types colour --colour-size 16,24 --seed 6161; "
        "aim-vllm train-synthetic --recipe qwen3-colour MODEL; aim-vllm eval --data DATA/items.jsonl "
        "--model MODEL --concurrency 4 --levels off balanced merge:0.25 merge:0.05 merge:0.05,method:pool "
        "merge:0.05,method:random --compare merge:0.05,method:pool merge:0.05 --compare "
        "merge:0.05,method:random merge:0.05 --seeds 200"
    ),
    "eval-qwen3-position": (
        "aim-vllm make-synthetic-data DATA --n 192 --types position --seed 6262; aim-vllm "
        "train-synthetic --recipe qwen3-position MODEL; aim-vllm eval --data DATA/items.jsonl "
        "--model MODEL --concurrency 4 --levels off balanced merge:0.25 merge:0.05 merge:0.05,method:pool "
        "merge:0.05,method:random --compare merge:0.05,method:pool merge:0.05 --compare "
        "merge:0.05,method:random merge:0.05 --seeds 200"
    ),
    "eval-qwen3-position-spread": (
        "the same as eval-qwen3-position with --levels off merge:0.25 merge:0.05 and "
        "`AIM_VLLM_SPREAD_POSITIONS=1` in the environment (merged tokens keep count-based positions)"
    ),
    "eval-qwen3-position-spread-compare": (
        "python scripts/compare_eval_runs.py <eval-qwen3-position> <eval-qwen3-position-spread> "
        "--levels merge:0.25 merge:0.05 --names content-aware spread"
    ),
    "eval-evs-local": (
        "aim-vllm eval --data runs/data-colour-small/items.jsonl --model <local> --concurrency 4 "
        "--levels off merge:0.05 merge:0.05,method:evs merge:0.05,method:pool merge:0.25,prune:3-5 "
        "merge:0.25,prune:3-5,method:evs"
    ),
}

# Run facts of the files that record none: the date of the commit that added the file, and the
# machine its `.md` names.
_DEV_VM = "AMD EPYC, 2 CPUs"
_XEON = "Intel Xeon, 2 CPUs (AVX-512), shared with other jobs"
_XEON_CAPPED = "Intel Xeon, 2 CPUs (AVX-512), the model trained with torch, MKL and oneDNN capped at AVX2"
PROVENANCE = {
    "eval-local-small": {"date": "2026-11-27", "machine": _DEV_VM},
    "eval-colour-small": {"date": "2026-11-27", "machine": _DEV_VM},
    "eval-colour": {"date": "2026-11-27", "machine": _DEV_VM},
    "eval-encoder-local": {"date": "2026-12-03", "machine": _DEV_VM},
    "eval-encoder-colour": {"date": "2026-12-03", "machine": _DEV_VM},
    "eval-evs-local": {"date": "2026-12-02", "machine": _DEV_VM},
    "eval-paired-local": {"date": "2026-12-07", "machine": _DEV_VM + " (AVX2)"},
    "eval-paired-local-compare": {"date": "2026-12-07", "machine": _DEV_VM + " (AVX2)"},
    "gateway-overhead-trivial": {"date": "2026-12-07", "machine": _DEV_VM + " (AVX2)"},
    "docker-smoke": {"date": "2026-12-07", "machine": _DEV_VM + " (AVX2), shared with other work"},
    "kv-memory-0.5b": {"date": "2026-12-02", "machine": _DEV_VM},
    "gpu-prefill-cpu-0.5b": {"date": "2026-12-03", "machine": _DEV_VM},
    "flops-table": {"date": "2026-12-07", "machine": "any (arithmetic on the published shapes)"},
    "eval-position-qwen": {"date": "2026-12-07", "machine": _XEON},
    "eval-paired-local-avx512": {"date": "2026-12-07", "machine": _XEON},
    "eval-paired-local-avx2-capped": {"date": "2026-12-08", "machine": _XEON_CAPPED},
    "eval-paired-local-avx2-capped-compare": {"date": "2026-12-08", "machine": _XEON_CAPPED},
    "eval-position-gradeable": {"date": "2026-12-07", "machine": _XEON},
    "eval-position-gradeable-compare": {"date": "2026-12-07", "machine": _XEON},
    "eval-paired-local-288-avx512": {"date": "2026-12-07", "machine": _XEON},
    "eval-paired-colour-288-avx512": {"date": "2026-12-07", "machine": _XEON},
    "eval-position-qwen-spread": {"date": "2026-12-07", "machine": _XEON},
    "eval-position-qwen-compare": {"date": "2026-12-07", "machine": _XEON},
    "eval-qwen3-colour": {"date": "2026-12-07", "machine": _XEON},
    "eval-qwen3-colour-compare": {"date": "2026-12-07", "machine": _XEON},
    "eval-qwen3-position": {"date": "2026-12-07", "machine": _XEON},
    "eval-qwen3-position-compare": {"date": "2026-12-07", "machine": _XEON},
    "eval-qwen3-position-spread": {"date": "2026-12-07", "machine": _XEON},
    "eval-qwen3-position-spread-compare": {"date": "2026-12-07", "machine": _XEON},
}


def load(stem: str) -> Any:
    return json.loads((RESULTS / f"{stem}.json").read_text())


def run_facts(stem: str) -> dict[str, str]:
    """Date, machine, vLLM and commit of a results file, from its own metadata or `PROVENANCE`."""
    data = load(stem)
    meta = data.get("meta") if isinstance(data, dict) else None
    if meta:
        return {
            "date": meta["started_at"][:10],
            "machine": f"{meta['device']}, {meta['cpu_count']} CPUs",
            "vllm": meta.get("vllm") or "",
            "commit": meta.get("git_commit") or "",
            "minutes": f"{meta['duration_s'] / 60:.0f}",
        }
    return dict(PROVENANCE[stem])


def _table(header: list[str], rows: list[list[Any]], right: int = 1) -> str:
    """A Markdown table; columns from `right` on are right-aligned (figures)."""
    align = ["---" if i < right else "---:" for i in range(len(header))]
    lines = [header, align, *[[str(cell) for cell in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def _x(value: float) -> str:
    return f"x{value:.2f}"


def _command(stem: str) -> str:
    command = COMMANDS[stem]
    return f"`{command}`" if command.startswith(("aim-vllm ", "python ")) else command


def render_run(stem: str) -> str:
    facts = run_facts(stem)
    parts = [facts["date"], facts["machine"]]
    if facts.get("vllm"):
        parts.append(f"vLLM {facts['vllm']}")
    if facts.get("minutes"):
        parts.append(f"{facts['minutes']} min")
    output = f"{stem}.md" if (RESULTS / f"{stem}.md").is_file() else f"{stem}.json"
    link = f"[{output}](results/{output})"
    return f"Run: {', '.join(parts)}; {_command(stem)}; full output {link}.\n"


def render_split(stem: str) -> str:
    """Fresh and repeated request per level (`aim-vllm bench --split-pairs`): where the time goes."""
    split = load(stem)["split"]
    many = len(split) > 1
    encoder = any("encoder_speedup" in row for rows in split.values() for row in rows)
    bound = all("amdahl_bound_speedup" in row for rows in split.values() for row in rows)
    header = ["media"] * many + ["level", "FLOPs ratio", "TTFT s", "TTFT speedup"] + ["Amdahl bound"] * bound
    header += ["encoder part speedup"] * encoder + [
        "LLM part s",
        "LLM speedup",
        "FLOPs speedup",
        "LLM / FLOPs",
    ]
    rows = []
    for media, levels in split.items():
        for r in levels:
            row = [media] * many + [
                f"`{r['level']}`",
                f"{r['flops_ratio']:.3f}",
                f"{r['ttft_fresh_p50_s']:.1f}",
            ]
            amdahl = r["amdahl_bound_speedup"] if bound else None
            row += [f"{r['e2e_speedup']:.2f}"] + ["-" if amdahl is None else f"{amdahl:.2f}"] * bound
            row += [f"{r.get('encoder_speedup', 1.0):.2f}"] * encoder
            row += [f"{r['ttft_repeat_p50_s']:.2f}", f"{r['llm_speedup']:.2f}", f"{r['flops_speedup']:.2f}"]
            rows.append(row + [f"{r['llm_speedup_vs_flops']:.2f}"])
    return _table(header, rows, right=1 + many)


def _reference_cells(data: dict) -> dict[tuple[str, int], dict]:
    return {(c["media"], c["concurrency"]): c for c in data["cells"] if c["level"] == data["reference"]}


def render_load(stem: str) -> str:
    """Every cell of a bench run: latency and requests/s against the reference level."""
    data = load(stem)
    reference = _reference_cells(data)
    header = ["media", "concurrency", "level", "FLOPs ratio", "TTFT p50 s", "TPOT p50 ms", "requests/s"]
    header += [f"requests/s vs {data['reference']}", "requests"]
    rows = []
    for c in data["cells"]:
        ref = reference.get((c["media"], c["concurrency"]))
        ratio = _x(c["requests_per_s"] / ref["requests_per_s"]) if ref else "-"
        rows.append(
            [
                c["media"],
                c["concurrency"],
                f"`{c['level']}`",
                f"{c['flops_ratio']:.3f}",
                f"{c['ttft_p50_s']:.1f}",
            ]
            + [f"{c['tpot_p50_s'] * 1000:.0f}", f"{c['requests_per_s']:.3f}", ratio, c["requests"]]
        )
    return _table(header, rows, right=3)


_STOCK_NAMES = {"evs": "EVS", "vidcom2": "VidCom2"}


def render_evs(stem: str) -> str:
    """AIM levels against vLLM's EVS (and VidCom2, where the run had it) at the same tokens: TTFT
    and requests/s per concurrency, the ratio to the stock engine with the higher requests/s."""
    data = load(stem)
    methods = data.get("evs_methods") or ["evs"]
    best: dict[tuple[str, int], dict] = {}
    for c in data["cells"]:
        key = (c["media"], c["concurrency"])
        if c["level"] in methods and c["requests_per_s"] > best.get(key, {}).get("requests_per_s", 0.0):
            best[key] = c
    stock = "/".join(_STOCK_NAMES[m] for m in methods)
    against = stock if len(methods) == 1 else f"better of {stock}"
    split = {(media, r["level"]): r for media, rows in data["split"].items() for r in rows}
    many = len(data["split"]) > 1
    concurrencies = sorted({c["concurrency"] for c in data["cells"]})
    header = ["media"] * many + [
        "level",
        "LLM prompt tokens",
        "LLM part s (c=1)",
        "encoder part speedup (c=1)",
    ]
    for n in concurrencies:
        header += [f"TTFT p50 s (c={n})", f"requests/s vs {against} (c={n})"]
    rows = []
    for media in data["split"]:
        for level in data["levels"]:
            cells = {
                c["concurrency"]: c for c in data["cells"] if c["media"] == media and c["level"] == level
            }
            s = split.get((media, level))
            row = [media] * many + [f"`{level}`", f"{cells[concurrencies[0]]['prompt_tokens']:.0f}"]
            encoder = f"{s['encoder_speedup']:.2f}" if s and "encoder_speedup" in s else "-"
            row += [f"{s['ttft_repeat_p50_s']:.2f}" if s else "-", encoder]
            for n in concurrencies:
                ratio = cells[n]["requests_per_s"] / best[(media, n)]["requests_per_s"]
                row += [f"{cells[n]['ttft_p50_s']:.1f}", _x(ratio)]
            rows.append(row)
    return _table(header, rows, right=1 + many)


def render_plugin(stem: str) -> str:
    """AIM engine with AIM off against plain vLLM, per cell: requests/s and each round's ratio."""
    data = load(stem)
    plain = {(c["media"], c["concurrency"]): c for c in data["cells"] if c["level"] == "plain"}
    header = ["media", "concurrency", "plain requests/s", "AIM off requests/s", "AIM off / plain"]
    header += ["per round", "TTFT p50 s plain / AIM off", "requests per engine"]
    rows = []
    for c in data["cells"]:
        if c["level"] != "aim-off":
            continue
        p = plain[(c["media"], c["concurrency"])]
        rounds = [a / b for a, b in zip(c["round_requests_per_s"], p["round_requests_per_s"], strict=True)]
        rows.append(
            [c["media"], c["concurrency"], f"{p['requests_per_s']:.3f}", f"{c['requests_per_s']:.3f}"]
            + [f"{c['requests_per_s'] / p['requests_per_s']:.2f}", f"{min(rounds):.2f}-{max(rounds):.2f}"]
            + [f"{p['ttft_p50_s']:.2f} / {c['ttft_p50_s']:.2f}", c["requests"]]
        )
    return _table(header, rows, right=2)


def render_serving(stem: str) -> str:
    """Ordinary-traffic workloads (`bench/serving.py`), stock vLLM against the AIM engine, AIM off."""
    header = ["workload", "stock vLLM", "AIM engine, AIM off", "AIM off / stock"]
    rows = []
    for f in load(stem)["serving"]:
        rows.append([f["label"], f"{f['plain']:.3f}", f"{f['aim-off']:.3f}", _x(f["ratio"]["aim-off"])])
    return _table(header, rows)


def render_kv_blocks(stem: str) -> str:
    header = ["frames", "level", "prompt tokens", "held (Design C)", "schedule's prediction"]
    header += ["every layer full (Design A)", "C / A"]
    rows = [
        [b["frames"], f"`{b['level']}`", b["prompt_tokens"], b["held"], b["predicted"], b["every_layer_full"]]
        + [f"{b['held_vs_full']:.2f}"]
        for b in load(stem)["blocks"]
    ]
    return _table(header, rows, right=2)


def render_kv_concurrency(stem: str) -> str:
    concurrency = load(stem)["concurrency"]
    header = ["level", "design", "peak running", "requests/s", "layer-blocks per request"]
    rows = [
        [
            f"`{r['level']}`",
            design,
            r["peak_running"],
            f"{r['requests_per_s']:.3f}",
            f"{r['mean_layer_blocks_held']:.0f}",
        ]
        for design, runs in concurrency.items()
        for r in runs
    ]
    return _table(header, rows, right=2)


def render_kv_decode(stem: str) -> str:
    tpot = load(stem)["decode_tpot_ms"]
    header = ["request", "decode ms per token, Design C", "Design A"]
    return _table(header, [[name, f"{ms:.1f}", f"{tpot['A'][name]:.1f}"] for name, ms in tpot["C"].items()])


def render_prefill(stem: str) -> str:
    """`bench/gpu_prefill.py`: one prefill in pure torch per variant."""
    header = [
        "variant",
        "visual tokens",
        "prefill s",
        "speedup",
        "FLOPs ratio",
        "FLOPs speedup",
        "speedup / FLOPs",
    ]
    rows = [
        [v["variant"], v["visual_tokens"], f"{v['ms_median'] / 1000:.1f}", f"{v['speedup']:.2f}"]
        + [f"{v['flops_ratio']:.3f}", f"{v['flops_speedup']:.2f}", f"{v['speedup_vs_flops']:.2f}"]
        for v in load(stem)["variants"]
    ]
    return _table(header, rows, right=2)


def render_flops(stem: str) -> str:
    """`bench/flops_table.py`: the paper's TFLOPs against this project's FLOPs model."""
    header = ["setting", "paper TFLOPs", "ours (paper convention)", "executed by this implementation"]
    rows = [
        [r["setting"], f"{r['paper_tflops']:.2f}", f"{r['ours_tflops']:.2f}", f"{r['executed_tflops']:.2f}"]
        for r in load(stem)
        if r["table"] == "paper"
    ]
    return _table(header, rows)


_QWEN3_VL_NAMES = {
    "qwen3-vl-2b": "Qwen3-VL-2B",
    "qwen3-vl-4b": "Qwen3-VL-4B",
    "qwen3-vl-8b": "Qwen3-VL-8B",
    "qwen3-vl-30b-a3b": "Qwen3-VL-30B-A3B (MoE)",
}


def _qwen3_vl_row(stem: str, arch: str, level: str) -> dict:
    return next(
        r for r in load(stem) if r["table"] == "qwen3-vl" and r["arch"] == arch and r["level"] == level
    )


def _qwen3_vl_flops(stem: str, arch: str, level: str) -> str:
    """Executed TFLOPs of AIM off -> `level`, with the factor saved."""
    off, aim = _qwen3_vl_row(stem, arch, "off"), _qwen3_vl_row(stem, arch, level)
    return f"{off['tflops']:.2f} -> {aim['tflops']:.2f} TFLOPs ({_x(1 / aim['ratio'])})"


def render_flops_qwen3_vl(stem: str) -> str:
    """`bench/flops_table.py`'s Qwen3-VL rows: executed LLM prefill TFLOPs per size at `off`,
    `merge:0.25` and `balanced` (ratio to `off` in brackets)."""
    header = [
        "model",
        "visual tokens (merged)",
        "`off`",
        "`merge:0.25`",
        "`balanced`",
        "`balanced` prune layers",
    ]
    rows = []
    for arch, name in _QWEN3_VL_NAMES.items():
        off, merge, balanced = (
            _qwen3_vl_row(stem, arch, level) for level in ("off", "merge:0.25", "balanced")
        )
        rows.append(
            [name, balanced["visual_tokens"], f"{off['tflops']:.2f}"]
            + [f"{r['tflops']:.2f} ({r['ratio']:.3f})" for r in (merge, balanced)]
            + ["{}-{}".format(*balanced["prune_layers"])]
        )
    return _table(header, rows, right=2)


def render_eval(stem: str) -> str:
    """`aim-vllm eval`'s summary: accuracy with its 95% Wilson interval against the FLOPs ratio."""
    header = ["name", "level", "n", "accuracy", "95% CI", "LLM prefill FLOPs ratio", "prompt tokens"]
    rows = [
        [
            r["name"],
            f"`{r['level']}`",
            r["n"],
            f"{r['accuracy']:.3f}",
            f"{r['ci_low']:.3f}-{r['ci_high']:.3f}",
        ]
        + [f"{r['flops_ratio']:.3f}", f"{r['prompt_tokens']:.0f}"]
        for r in load(stem)
    ]
    return _table(header, rows, right=2)


def _difference(difference: float, low: float, high: float) -> str:
    """A paired difference with its 95% interval, as every paired table and cell writes it."""
    return f"{difference:+.3f} ({low:+.3f} to {high:+.3f})"


def render_paired(stem: str) -> str:
    """`aim-vllm eval`'s summary with each level's paired difference against its reference."""
    header = ["level", "n", "accuracy", "Δ vs reference (paired 95% CI)", "lost / gained", "McNemar p"]
    header += ["verdict", "LLM prefill FLOPs ratio"]
    rows = []
    for r in load(stem):
        if r["verdict"] == "reference":
            difference, p = f"— (reference: `{r['reference']}`)", "—"
        else:
            difference = _difference(r["difference"], r["difference_low"], r["difference_high"])
            p = f"{r['mcnemar_p']:.2g}"
        row = [f"`{r['level']}`", r["paired_n"], f"{r['accuracy']:.3f}", difference]
        rows.append(row + [f"{r['lost']} / {r['gained']}", p, r["verdict"], f"{r['flops_ratio']:.3f}"])
    return _table(header, rows, right=1)


def render_compare(stem: str) -> str:
    """`aim-vllm eval --compare A B`'s pairs (its `paired.json`)."""
    header = [
        "level",
        "reference",
        "n",
        "Δ accuracy (paired 95% CI)",
        "lost / gained",
        "McNemar p",
        "verdict",
    ]
    rows = [
        [f"`{c['level']}`", f"`{c['reference']}`", c["n"]]
        + [_difference(c["difference"], c["low"], c["high"]), f"{c['lost']} / {c['gained']}"]
        + [f"{c['p_value']:.2g}", c["verdict"]]
        for c in load(stem)["comparisons"]
    ]
    return _table(header, rows, right=2)


def _cpu(machine: dict) -> str:
    """`training.json`'s machine as one cell: model and torch's kernel level, "capped" when the run
    limited the instruction sets (`isa_limits`: torch, MKL and oneDNN at AVX2 on an AVX-512 CPU)."""
    capped = ", capped" if machine.get("isa_limits") else ""
    return f"{machine['cpu'].replace('(R)', '')} ({machine['torch_cpu_capability']}{capped})"


def _seeds(record: dict) -> str:
    """The kept seed, after any that stalled (`seeds`: each try's seed, held-out accuracy, steps)."""
    tries = record.get("seeds") or []
    stalled = [t for t in tries if t["seed"] != record["config"]["seed"]]
    after = "; ".join(f"{t['seed']}: {t['eval_accuracy']:.3f} at {t['steps']}" for t in stalled)
    return f"{record['config']['seed']} (after {after})" if after else str(record["config"]["seed"])


def _train_minutes(record: dict) -> str:
    """Wall time of every seed the run tried."""
    tries = record.get("seeds") or [record]
    return f"{sum(t['train_wall_s'] for t in tries) / 60:.1f}"


def _stage_shapes(stage: dict) -> str:
    """A training stage's colour-question shape sides, or its question types when it asks none."""
    if "colour" not in stage["types"]:
        return "/".join(stage["types"])
    low, high = stage["colour_size"]
    return f"{low}-{high - 1}"


def render_training(stem: str) -> str:
    """The trainings an index file lists (`{"runs": [STEM, ...]}`): recipe, CPU, steps, wall time,
    held-out probes and final held-out accuracy, each from that run's `training.json` copy (all ran
    on one torch thread)."""
    header = [
        "run",
        "stages: steps x colour shape side (px)",
        "CPU",
        "peak lr",
        "seed (after stalled seeds: held-out accuracy at steps)",
        "steps",
        "wall, all seeds (min)",
    ]
    header += ["held-out probes", "held-out accuracy (n)"]
    rows = []
    for run in load(stem)["runs"]:
        record = load(run)
        stages = ", ".join(f"{st['steps']} x {_stage_shapes(st)}" for st in record["config"]["stages"])
        probes = ", ".join(f"{p['probe_accuracy']:.2f}" for p in record["curve"])
        rows.append(
            [f"[{run}](results/{run}.json)", stages, _cpu(record["machine"])]
            + [f"{record['config']['lr']:g}", _seeds(record)]
            + [record["steps"], _train_minutes(record), probes]
            + [f"{record['eval']['accuracy']:.3f} ({record['eval']['items']})"]
        )
    return _table(header, rows, right=3)


def _ordered(a: float, b: float) -> str:
    return ">" if a > b else "<" if a < b else "="


def render_agreement(stem: str) -> str:
    """Every pair of levels that two eval runs (`{"runs": [STEM_A, STEM_B]}`, say two trainings on
    different CPUs) both scored: the order of their accuracies in each run, and whether the runs
    agree (no pair in opposite orders; a tie agrees with either order)."""
    first, second = load(stem)["runs"]
    accuracy = [{r["level"]: r["accuracy"] for r in load(run)} for run in (first, second)]
    levels = [level for level in accuracy[0] if level in accuracy[1]]
    header = ["level A", "level B", f"{first}: A vs B", f"{second}: A vs B", "agree"]
    rows = []
    for i, a in enumerate(levels):
        for b in levels[i + 1 :]:
            orders = [_ordered(run[a], run[b]) for run in accuracy]
            cells = [f"{run[a]:.3f} {o} {run[b]:.3f}" for run, o in zip(accuracy, orders, strict=True)]
            agree = "=" in orders or orders[0] == orders[1]
            rows.append([f"`{a}`", f"`{b}`", *cells, "yes" if agree else "**no**"])
    return _table(header, rows, right=2)


def render_smoke(stem: str) -> str:
    """`deploy/smoke.sh`: build, size, start and request times of each run."""
    runs = load(stem)["runs"]

    def seconds(value: float | None, absent: str = "present") -> str:
        return absent if value is None else f"{value:g} s"

    def minutes(value: float) -> str:
        return f"{int(value // 60)} min {int(value % 60)} s"

    rows = [
        ["base image (debootstrap + import)", *[seconds(r["base_image_s"]) for r in runs]],
        ["image build (`docker build`, tiny model baked in)", *[seconds(r["build_s"]) for r in runs]],
        ["image size (`docker image inspect`)", *[f"{r['image_gb']:.2f} GB" for r in runs]],
        ["`serve` container: start to `/ready`", *[seconds(r["ready_s"]) for r in runs]],
        [
            "image request / 8-frame video request at `balanced`",
            *[f"{r['image_request_s']:g} s / {r['video_request_s']:g} s" for r in runs],
        ],
        [
            "compose: `up` to the gateway's `/ready` (two replicas start together)",
            *[seconds(r["compose_ready_s"]) for r in runs],
        ],
        ["whole test", *[minutes(r["total_s"]) for r in runs]],
    ]
    return _table(["", *[r["run"] for r in runs]], rows)


def render_gateway(stem: str) -> str:
    """`bench/gateway_overhead.py`: latency and requests/s per workload and target."""
    header = ["workload", "target", "p50 ms", "p99 ms", "requests/s", "p50 added vs direct, ms"]
    rows = []
    for workload, targets in load(stem)["workloads"].items():
        direct = targets["direct"]
        for name, t in targets.items():
            if "requests" not in t or "p50_ms" not in t or "requests_per_s" not in t:
                continue  # ratio and difference rows (no request count)
            added = "-" if name == "direct" else f"{t['p50_ms'] - direct['p50_ms']:+.2f}"
            rows.append(
                [
                    workload,
                    name,
                    f"{t['p50_ms']:.2f}",
                    f"{t['p99_ms']:.2f}",
                    f"{t['requests_per_s']:.1f}",
                    added,
                ]
            )
    return _table(header, rows, right=2)


# --- the README summary: one figure per row, each read from its file --------------------------


def _split_row(stem: str, level: str, key: str, media: str | None = None) -> dict:
    split = load(stem)["split"]
    rows = split[media] if media else next(iter(split.values()))
    return next(r for r in rows if r["level"] == level)[key]


def _cell(stem: str, level: str, key: str, concurrency: int) -> float:
    return next(
        c[key] for c in load(stem)["cells"] if c["level"] == level and c["concurrency"] == concurrency
    )


def _vs_reference(stem: str, level: str, concurrency: int, reference: str) -> float:
    return _cell(stem, level, "requests_per_s", concurrency) / _cell(
        stem, reference, "requests_per_s", concurrency
    )


def _vs_best_stock(stem: str, level: str, concurrency: int, media: str) -> float:
    """`level`'s requests/s over the better stock video pruning engine's (EVS mode)."""
    data = load(stem)
    cells = [c for c in data["cells"] if c["media"] == media and c["concurrency"] == concurrency]
    best = max(c["requests_per_s"] for c in cells if c["level"] in data["evs_methods"])
    return next(c["requests_per_s"] for c in cells if c["level"] == level) / best


def _serving(stem: str, figure: str) -> float:
    return next(f["ratio"]["aim-off"] for f in load(stem)["serving"] if f["figure"] == figure)


def _eval(stem: str, name: str) -> str:
    r = next(r for r in load(stem) if r["name"] == name)
    return f"{r['accuracy']:.3f} ({r['ci_low']:.2f}-{r['ci_high']:.2f})"


def _paired(stem: str, name: str) -> str:
    r = next(r for r in load(stem) if r["name"] == name)
    difference = _difference(r["difference"], r["difference_low"], r["difference_high"])
    return f"Δ {difference}, McNemar p {r['mcnemar_p']:.2g}: {r['verdict']}"


def _across_runs(stem: str, level: str) -> str:
    """`scripts/compare_eval_runs.py`'s pair at `level`: both accuracies and the paired difference."""
    c = next(c for c in load(stem)["comparisons"] if c["level"].split(" (")[0] == level)
    (a, accuracy_a), (b, accuracy_b) = c["accuracy"].items()
    difference = _difference(c["difference"], c["low"], c["high"])
    return f"`{level}`: {accuracy_a:.3f} {a} vs {accuracy_b:.3f} {b}, Δ {difference}"


def _compared(stem: str, level: str) -> str:
    """`aim-vllm eval --compare`'s pair of `level` with its reference (paired.json)."""
    c = next(c for c in load(stem)["comparisons"] if c["level"] == level)
    difference = _difference(c["difference"], c["low"], c["high"])
    return f"`{level}` vs `{c['reference']}` Δ {difference}, McNemar p {c['p_value']:.2g}"


def _kv(stem: str, frames: int, level: str) -> dict:
    return next(b for b in load(stem)["blocks"] if b["frames"] == frames and b["level"] == level)


def _kv_peak(stem: str, design: str, level: str) -> int:
    return next(r["peak_running"] for r in load(stem)["concurrency"][design] if r["level"] == level)


# (what, results file, the figure from that file); the order is the README's.
SUMMARY: list[tuple[str, str, Callable[[str], str]]] = [
    (
        "LLM prefill speedup, `balanced`, 8-frame video, 0.5B shapes",
        "bench-0.5b-video8",
        lambda s: (
            f"x{_split_row(s, 'balanced', 'llm_speedup'):.2f} "
            f"(FLOPs model x{_split_row(s, 'balanced', 'flops_speedup'):.2f})"
        ),
    ),
    (
        "LLM prefill FLOPs, `balanced`, Qwen3-VL-30B-A3B (MoE), 16-frame video",
        "flops-table",
        lambda s: _qwen3_vl_flops(s, "qwen3-vl-30b-a3b", "balanced"),
    ),
    (
        "TTFT end to end, `balanced`, 16-frame video, vLLM defaults on",
        "bench-0.5b-video16-defaults",
        lambda s: (
            f"x{_split_row(s, 'balanced', 'e2e_speedup'):.2f} "
            f"(Amdahl bound x{_split_row(s, 'balanced', 'amdahl_bound_speedup'):.2f})"
        ),
    ),
    (
        "TTFT end to end, `balanced,encoder:0.25`, 8-frame video",
        "bench-0.5b-encoder",
        lambda s: f"x{_split_row(s, 'balanced,encoder:0.25', 'e2e_speedup', 'video8'):.2f}",
    ),
    (
        "requests/s, `max`, images, concurrency 4",
        "bench-0.5b-image",
        lambda s: _x(_vs_reference(s, "max", 4, "off")) + " of AIM off",
    ),
    (
        "KV held after prefill, `max`, 16 frames",
        "kv-memory-0.5b",
        lambda s: (
            f"{_kv(s, 16, 'max')['held']} of {_kv(s, 16, 'max')['every_layer_full']} layer-blocks; "
            f"{_kv_peak(s, 'C', 'max')} requests at once vs {_kv_peak(s, 'A', 'max')} with every layer full"
        ),
    ),
    (
        "AIM off vs stock vLLM (defaults): text decode requests/s",
        "plugin-overhead-0.5b-defaults",
        lambda s: _x(_serving(s, "requests_per_s")),
    ),
    (
        "requests/s vs vLLM EVS at equal tokens, `aim-tokens`, Qwen2.5-VL-3B, 16 frames, c=1",
        "evs-encoder16-qwen2.5-vl-3b",
        lambda s: _x(_vs_reference(s, "aim-tokens", 1, "evs")),
    ),
    (
        "requests/s vs the better of vLLM's EVS and VidCom2 at equal tokens, `aim-tokens` and "
        "`aim-tokens+encoder` (encoder:0.5), Qwen3-VL-8B widths at 12 layers, 16 frames, c=4",
        "evs-vidcom2-qwen3-vl-8b-12l-2rounds",
        lambda s: (
            f"{_x(_vs_best_stock(s, 'aim-tokens', 4, 'video16'))}; "
            f"{_x(_vs_best_stock(s, 'aim-tokens+encoder', 4, 'video16'))}"
        ),
    ),
    (
        "accuracy, patch-local synthetic model (today's `local` recipe): `off`, and `balanced` "
        "against it paired (n=288)",
        "eval-paired-local-288-avx512",
        lambda s: f"{_eval(s, 'off')}; {_paired(s, 'balanced')}",
    ),
    (
        "accuracy, position task (synthetic Qwen2.5-VL, n=288): AIM's merging and uniform pooling, "
        "each to 5% of the tokens, against `off`, paired",
        "eval-position-gradeable",
        lambda s: (
            f"`merge:0.05` {_paired(s, 'merge:0.05')}; `merge:0.05,method:pool` "
            f"{_paired(s, 'merge:0.05,method:pool')}"
        ),
    ),
    (
        "accuracy, position task on a patch-local synthetic Qwen2.5-VL: merged tokens at their "
        "survivors' M-RoPE positions (content-aware, the default) vs count-based (spread), paired (n=128)",
        "eval-position-qwen-compare",
        lambda s: f"{_across_runs(s, 'merge:0.25')}; {_across_runs(s, 'merge:0.125')}",
    ),
    (
        "accuracy, position task (synthetic Qwen3-VL, n=192): `merge:0.25` against `off`, and pooling "
        "against AIM's merging at 5% of the tokens, paired",
        "eval-qwen3-position",
        lambda s: (
            f"`merge:0.25` {_paired(s, 'merge:0.25')}; {_compared(s + '-compare', 'merge:0.05,method:pool')}"
        ),
    ),
]


def render_summary(_: str) -> str:
    header = ["what", "figure", "command", "machine", "date", "results"]
    rows = []
    for what, stem, figure in SUMMARY:
        facts = run_facts(stem)
        link = f"[{stem}](docs/results/{stem}.json)"
        rows.append([what, figure(stem), _command(stem), facts["machine"], facts["date"], link])
    return _table(header, rows, right=6)


RENDERERS: dict[str, Callable[[str], str]] = {
    "run": render_run,
    "split": render_split,
    "load": render_load,
    "evs": render_evs,
    "plugin": render_plugin,
    "serving": render_serving,
    "kv-blocks": render_kv_blocks,
    "kv-concurrency": render_kv_concurrency,
    "kv-decode": render_kv_decode,
    "prefill": render_prefill,
    "flops": render_flops,
    "flops-qwen3-vl": render_flops_qwen3_vl,
    "eval": render_eval,
    "paired": render_paired,
    "compare": render_compare,
    "gateway": render_gateway,
    "smoke": render_smoke,
    "training": render_training,
    "agreement": render_agreement,
    "table": render_summary,
}


def render_region(name: str) -> str:
    stem, _, kind = name.partition("/")
    if kind not in RENDERERS:
        raise ValueError(f"region {name!r}: unknown kind {kind!r}; expected one of {', '.join(RENDERERS)}")
    return RENDERERS[kind](stem)


def documents() -> list[Path]:
    return sorted({path for pattern in DOCUMENTS for path in ROOT.glob(pattern)})


def render_text(text: str) -> str:
    return _REGION.sub(lambda m: m.group(1) + render_region(m.group(2)) + m.group(4), text)


def stale_regions() -> list[str]:
    """`path: region` for every region whose text differs from what its results file renders."""
    stale = []
    for path in documents():
        text = path.read_text()
        for match in _REGION.finditer(text):
            if match.group(3) != render_region(match.group(2)):
                stale.append(f"{path.relative_to(ROOT)}: {match.group(2)}")
    return stale


def _from_md(path: Path) -> Any:
    """The figures of a Markdown-only result: `aim-vllm eval`'s summary table, or the JSON line of
    `bench/gateway_overhead.py`."""
    text = path.read_text()
    for line in text.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    table = re.search(r"^\| name \| level \| n \| accuracy .*?\n\|[-| ]+\|\n((?:\|.*\|\n)+)", text, re.M)
    if table is None:
        raise ValueError(f"{path}: neither an eval summary table nor a JSON line")
    rows = []
    for line in table.group(1).splitlines():
        name, level, n, accuracy, ci, flops, ttft, prompt = (
            cell.strip() for cell in line.strip("|").split("|")
        )
        low, high = ci.split("-")
        rows.append(
            {"name": name, "level": level.strip("`"), "n": int(n), "accuracy": float(accuracy)}
            | {"ci_low": float(low), "ci_high": float(high), "flops_ratio": float(flops)}
            | {"ttft_s": float(ttft), "prompt_tokens": float(prompt), "derived_from": path.name}
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a region is stale")
    parser.add_argument("--from-md", type=Path, metavar="FILE.md", help="write FILE.json from FILE.md, once")
    args = parser.parse_args(argv)
    if args.from_md:
        target = args.from_md.with_suffix(".json")
        target.write_text(json.dumps(_from_md(args.from_md), indent=2) + "\n")
        print(f"wrote {target}")
        return 0
    if args.check:
        stale = stale_regions()
        for line in stale:
            print(f"stale: {line} (run scripts/render_docs.py)", file=sys.stderr)
        return 1 if stale else 0
    for path in documents():
        text = path.read_text()
        rendered = render_text(text)
        if rendered != text:
            path.write_text(rendered)
            print(f"rendered {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
