"""The benchmark's outputs: result.json, result.md (Markdown tables) and result.png (plot).

`result` is the dict `runner` returns: `meta`, `reference`, `cells` (one per media, concurrency
and level, with `ratio` to the reference) and, for AIM levels, `split` (LLM part vs end to end).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import statistics
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PLUGIN_GOAL = 0.98  # issue 8: the plugin with AIM off keeps >= 98% of plain vLLM's throughput
# issue 27: ordinary traffic on the AIM engine against stock vLLM with its defaults (ratio bounds)
SERVING_GOALS = {"requests_per_s": (">=", 0.97), "second_ttft_s": ("<=", 1.2), "longest_gap_s": ("<=", 1.2)}

_LOAD_COLUMNS = (
    # (header, cell key or ("ratio", metric), format)
    ("FLOPs", "flops_ratio", "{:.3f}"),
    ("TTFT p50 s", "ttft_p50_s", "{:.3f}"),
    ("xref", ("ratio", "ttft_p50_s"), "{:.2f}"),
    ("TPOT p50 ms", "tpot_p50_s", "ms"),
    ("xref", ("ratio", "tpot_p50_s"), "{:.2f}"),
    ("E2E p50 s", "e2e_p50_s", "{:.3f}"),
    ("xref", ("ratio", "e2e_p50_s"), "{:.2f}"),
    ("req/s", "requests_per_s", "{:.3f}"),
    ("xref", ("ratio", "requests_per_s"), "{:.2f}"),
    ("out tok/s", "output_tokens_per_s", "{:.2f}"),
    ("xref", ("ratio", "output_tokens_per_s"), "{:.2f}"),
    ("prompt tok", "prompt_tokens", "{:.0f}"),
    ("n", "requests", "{}"),
    ("err", "errors", "{}"),
)
_SPLIT_COLUMNS = (
    ("FLOPs", "flops_ratio", "{:.3f}"),
    ("TTFT s", "ttft_fresh_p50_s", "{:.3f}"),
    ("speedup", "e2e_speedup", "{:.2f}"),
    ("Amdahl bound", "amdahl_bound_speedup", "{:.2f}"),
    ("encoder part speedup", "encoder_speedup", "{:.2f}"),
    ("LLM part s", "ttft_repeat_p50_s", "{:.3f}"),
    ("LLM speedup", "llm_speedup", "{:.2f}"),
    ("FLOPs speedup", "flops_speedup", "{:.2f}"),
    ("LLM/FLOPs", "llm_speedup_vs_flops", "{:.2f}"),
    ("pairs", "pairs", "{}"),
)


def _value(row: dict[str, Any], key: str | tuple[str, str]) -> Any:
    return row.get(key[0], {}).get(key[1]) if isinstance(key, tuple) else row.get(key)


def _format(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "ms":
        return f"{1000 * value:.1f}"
    return fmt.format(value)


def _table(rows: list[dict[str, Any]], lead: tuple[str, ...], columns: tuple, reference: str) -> str:
    headers = [*lead, *(h.replace("xref", f"x{reference}") for h, _, _ in columns)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(lead) + "---:|" * len(columns)]
    for row in rows:
        cells = [str(row[key]) for key in lead] + [_format(_value(row, k), f) for _, k, f in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_table(result: dict[str, Any]) -> str:
    return _table(result["cells"], ("media", "concurrency", "level"), _LOAD_COLUMNS, result["reference"])


def split_table(result: dict[str, Any]) -> str:
    rows = [
        {"media": media, **row} for media, media_rows in result.get("split", {}).items() for row in media_rows
    ]
    return _table(rows, ("media", "level"), _SPLIT_COLUMNS, result["reference"])


# issue 30: AIM merge + prune at least level with the better stock method (TTFT, requests/s) at
# equal tokens; with encoder merging at least this many times the better one's requests/s
STOCK_ENCODER_GOAL = 1.3
_TOKENS_LEVEL, _ENCODER_LEVEL = "aim-tokens", "aim-tokens+encoder"


def _stock_methods(result: dict[str, Any]) -> list[str]:
    return list(result.get("evs_methods") or ["evs"])


def _best_stock(cells: dict[tuple, dict[str, Any]], stock: list[str], media: str, concurrency: int) -> dict:
    """The better stock engine's TTFT p50 (lowest) and requests/s (highest) in one (media, c)."""
    found = [cells[(media, concurrency, m)] for m in stock if (media, concurrency, m) in cells]
    ttfts = [c["ttft_p50_s"] for c in found if c.get("ttft_p50_s") is not None]
    rates = [c["requests_per_s"] for c in found if c.get("requests_per_s") is not None]
    return {"ttft_p50_s": min(ttfts, default=None), "requests_per_s": max(rates, default=None)}


def comparison_table(result: dict[str, Any]) -> str:
    """EVS mode, every level in one table: per media, LLM prompt tokens, FLOPs, then per concurrency
    TTFT p50 and requests/s with their ratios to the better stock engine (xstock: lowest TTFT,
    highest requests/s of the stock methods), and the LLM part (split: the repeat's TTFT, c=1)."""
    stock = _stock_methods(result)
    cells = {(c["media"], c["concurrency"], c["level"]): c for c in result["cells"]}
    concurrencies = sorted({c["concurrency"] for c in result["cells"]})
    split = {(m, row["level"]): row for m, rows in result.get("split", {}).items() for row in rows}
    headers = ["media", "level", "LLM tok", "FLOPs"]
    for c in concurrencies:
        headers += [f"TTFT c={c} s", "xstock", f"req/s c={c}", "xstock"]
    headers.append("LLM part s")
    lines = ["| " + " | ".join(headers) + " |", "|---|---|" + "---:|" * (len(headers) - 2)]
    for media in dict.fromkeys(c["media"] for c in result["cells"]):
        for level in result["levels"]:
            row_cells = [cells.get((media, c, level)) for c in concurrencies]
            if not any(row_cells):
                continue
            first = next(c for c in row_cells if c)
            row = [media, level, _format(first.get("prompt_tokens"), "{:.0f}")]
            row.append(_format(first.get("flops_ratio"), "{:.3f}"))
            for c, cell in zip(concurrencies, row_cells, strict=True):
                best = _best_stock(cells, stock, media, c)
                ttft, rate = (cell or {}).get("ttft_p50_s"), (cell or {}).get("requests_per_s")
                row += [_format(ttft, "{:.3f}"), _format(_ratio(ttft, best["ttft_p50_s"]), "{:.2f}")]
                row += [_format(rate, "{:.3f}"), _format(_ratio(rate, best["requests_per_s"]), "{:.2f}")]
            row.append(_format(split.get((media, level), {}).get("ttft_repeat_p50_s"), "{:.3f}"))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


def stock_verdict(result: dict[str, Any]) -> list[str]:
    """The issue-30 goals per (media, concurrency): aim-tokens at least level with the better stock
    engine on TTFT and requests/s; aim-tokens+encoder at >= STOCK_ENCODER_GOAL x its requests/s."""
    stock = _stock_methods(result)
    cells = {(c["media"], c["concurrency"], c["level"]): c for c in result["cells"]}
    lines = []
    for media, concurrency in dict.fromkeys((c["media"], c["concurrency"]) for c in result["cells"]):
        best = _best_stock(cells, stock, media, concurrency)
        parts = []
        tokens = cells.get((media, concurrency, _TOKENS_LEVEL), {})
        ttft = _ratio(tokens.get("ttft_p50_s"), best["ttft_p50_s"])
        rate = _ratio(tokens.get("requests_per_s"), best["requests_per_s"])
        if ttft is not None and rate is not None:
            met = ttft <= 1.0 and rate >= 1.0
            parts.append(
                f"{_TOKENS_LEVEL} TTFT x{ttft:.2f}, req/s x{rate:.2f} ({'meets' if met else 'misses'} level)"
            )
        encoder_cell = cells.get((media, concurrency, _ENCODER_LEVEL), {})
        encoder = _ratio(encoder_cell.get("requests_per_s"), best["requests_per_s"])
        if encoder is not None:
            verdict = "meets" if encoder >= STOCK_ENCODER_GOAL else "misses"
            parts.append(f"{_ENCODER_LEVEL} req/s x{encoder:.2f} ({verdict} >= {STOCK_ENCODER_GOAL})")
        if parts:
            lines.append(
                f"- {media} c={concurrency}, against the better of {'/'.join(stock)}: " + "; ".join(parts)
            )
    return lines


def serving_table(result: dict[str, Any]) -> str:
    """One row per `bench.serving` figure: each engine's value and the ratio to the reference."""
    reference = result["reference"]
    engines = [e for e in result["levels"] if e != reference]
    lines = [
        f"| figure | {reference} | "
        + " | ".join(engines)
        + " | "
        + " | ".join(f"x{reference}" for _ in engines)
        + " |",
        "|---|" + "---:|" * (1 + 2 * len(engines)),
    ]
    for row in result["serving"]:
        values = [_format(row.get(e), "{:.3f}") for e in [reference, *engines]]
        ratios = [_format(row["ratio"].get(e), "{:.2f}") for e in engines]
        lines.append(f"| {row['label']} | " + " | ".join(values + ratios) + " |")
    return "\n".join(lines)


def serving_verdict(result: dict[str, Any]) -> str:
    """The issue-27 goals, each met or missed by the measured ratio."""
    rows = {row["figure"]: row for row in result["serving"]}
    parts = []
    for figure, (sense, bound) in SERVING_GOALS.items():
        ratios = [r for r in rows.get(figure, {}).get("ratio", {}).values() if r is not None]
        if not ratios:
            continue
        worst = min(ratios) if sense == ">=" else max(ratios)
        met = worst >= bound if sense == ">=" else worst <= bound
        parts.append(f"{figure} x{worst:.2f} ({'meets' if met else 'misses'} {sense} {bound})")
    return "goals: " + "; ".join(parts) if parts else "goals: not measured"


def plugin_verdict(result: dict[str, Any]) -> str:
    """One line: the smallest aim-off/plain throughput ratio over the cells, against the goal."""
    ratios = [
        c["ratio"]["requests_per_s"]
        for c in result["cells"]
        if c["level"] != result["reference"] and c["ratio"]["requests_per_s"] is not None
    ]
    if not ratios:
        return "plugin cost: no throughput ratio measured"
    worst = min(ratios)
    verdict = "meets" if worst >= PLUGIN_GOAL else "misses"
    line = (
        f"plugin cost: requests/s of AIM off / plain vLLM, worst cell {worst:.3f} "
        f"({verdict} the goal >= {PLUGIN_GOAL})"
    )
    rounds = sorted(
        r
        for c in result["cells"]
        if c["level"] != result["reference"]
        for r in c.get("round_ratio_requests_per_s") or []
        if r is not None
    )
    if len(rounds) > 1:
        line += (
            f"; round by round (noise): median {statistics.median(rounds):.3f}, "
            f"range {rounds[0]:.3f}-{rounds[-1]:.3f} over {len(rounds)} cell-rounds"
        )
    return line


def markdown(result: dict[str, Any]) -> str:
    """The whole report: a header with the setup, the load table, and the split or verdict."""
    meta = result["meta"]
    parts = [
        f"# aim-vllm bench ({result['mode']})",
        "",
        f"model `{meta['model']}`; device {meta['device']} ({meta['cpu_count']} CPUs); vLLM {meta['vllm']}; "
        f"load average {meta['loadavg_start']} -> {meta['loadavg_end']}; {meta['duration_s']:.0f} s",
        f"settings: {json.dumps(meta['settings'], sort_keys=True)}",
        "",
        f"## Load: latency and throughput per cell (x{result['reference']} = ratio to "
        f"{result['reference']} of the same media and concurrency)",
        "",
        load_table(result),
    ]
    if result["mode"] == "plugin-overhead":
        parts += ["", plugin_verdict(result)]
    if result.get("serving"):
        parts += [
            "",
            "## Ordinary traffic: AIM off on the AIM engine vs stock vLLM (medians over rounds)",
            "",
        ]
        parts += [serving_table(result), "", serving_verdict(result)]
    if result["mode"] == "evs":
        levels = "; ".join(f"`{label}`: {text}" for label, text in result["levels"].items())
        parts += ["", f"levels: {levels}", "", f"Note: {result['evs_cpu_fix']}."]
        stock = ", ".join(_stock_methods(result))
        parts += [
            "",
            f"## Every level side by side (xstock = ratio to the better of {stock}; "
            "LLM part = TTFT of a repeat request reusing the encoder output, c=1)",
            "",
            comparison_table(result),
        ]
        verdict = stock_verdict(result)
        parts += ["", "Goals (issue 30):", *verdict] if verdict else []
    if result.get("split"):
        parts += ["", "## Where the time goes: first token, end to end vs LLM part (concurrency 1)", ""]
        parts.append(split_table(result))
    return "\n".join(parts) + "\n"


_SUMMARY_KEYS = (
    "media", "concurrency", "level", "flops_ratio", "visual_tokens_in", "visual_tokens_merged",
    "prompt_tokens", "ttft_p50_s", "tpot_p50_s", "e2e_p50_s", "requests_per_s", "output_tokens_per_s",
    "errors", "ratio",
)  # fmt: skip
_SUMMARY_META = (
    "model",
    "device",
    "cpu_count",
    "vllm",
    "git_commit",
    "duration_s",
    "loadavg_start",
    "loadavg_end",
)


def summary_line(result: dict[str, Any], paths: dict[str, Path]) -> dict[str, Any]:
    """The run in one JSON-able dict (setup, key figures per cell, output files): one line to log."""
    return {
        "bench": result["bench"],
        "mode": result["mode"],
        **{key: result["meta"][key] for key in _SUMMARY_META},
        "levels": result["levels"],
        "cells": [{key: cell.get(key) for key in _SUMMARY_KEYS} for cell in result["cells"]],
        "outputs": {name: str(path) for name, path in paths.items()},
    }


def write_outputs(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """result.json, result.md and result.png in `out_dir` (created); the paths written.

    The plot needs matplotlib (the `dev` extra); without it the plot is left out with a warning.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "result.json", "markdown": out_dir / "result.md"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(markdown(result))
    if importlib.util.find_spec("matplotlib") is None:
        logger.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        return paths
    paths["plot"] = out_dir / "result.png"
    plot(result, paths["plot"])
    return paths


def plot(result: dict[str, Any], path: Path) -> None:
    """Latency and throughput ratios vs executed FLOPs ratio (levels), or plugin ratios (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    if result["mode"] == "plugin-overhead":
        _plugin_bars(result, axes)
    else:
        _flops_panels(result, axes)
    fig.suptitle(f"aim-vllm bench: {result['meta']['model_label']} on {result['meta']['device']}")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _series(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Cells grouped per (media, concurrency), sorted by FLOPs ratio."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for cell in result["cells"]:
        if cell.get("flops_ratio") is not None:
            groups.setdefault(f"{cell['media']} c={cell['concurrency']}", []).append(cell)
    return {name: sorted(cells, key=lambda c: c["flops_ratio"]) for name, cells in groups.items()}


# (metrics: solid then dashed line, y label, draw the FLOPs-proportional line)
_PANELS = (
    (("ttft_p50_s", "e2e_p50_s"), "latency / off (p50; lower is better)", True),
    (("requests_per_s", "output_tokens_per_s"), "throughput / off (higher is better)", False),
)
_STYLES = ("o-", "s--")
_NAMES = {"ttft_p50_s": "TTFT", "e2e_p50_s": "E2E", "requests_per_s": "req/s", "output_tokens_per_s": "tok/s"}


def _flops_panels(result: dict[str, Any], axes: Any) -> None:
    series = _series(result)
    xs = sorted({c["flops_ratio"] for cells in series.values() for c in cells if c["flops_ratio"] > 0})
    for ax, (metrics, ylabel, proportional) in zip(axes, _PANELS, strict=True):
        ax.axhline(1.0, color="grey", linewidth=0.8)
        if xs and proportional:
            ax.plot(xs, xs, ":", color="grey", label="= FLOPs ratio (LLM-bound ideal)")
        for index, (name, cells) in enumerate(series.items()):
            _plot_series(ax, name, cells, metrics, f"C{index}", annotate=index == 0)
        ax.set_xlabel("executed LLM prefill FLOPs / off (usage.aim.flops_ratio)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)


def _plot_series(ax: Any, name: str, cells: list[dict[str, Any]], metrics: tuple, color: str, annotate: bool):
    """One (media, concurrency) series: a line per metric, level names at the first metric's points."""
    for metric, style in zip(metrics, _STYLES, strict=True):
        points = [(c["flops_ratio"], c["ratio"][metric]) for c in cells if c["ratio"][metric] is not None]
        if points:
            label = f"{name} {_NAMES[metric]}"
            ax.plot(*zip(*points, strict=True), style, label=label, color=color, alpha=0.85)
    for cell in cells if annotate else []:
        if cell["ratio"][metrics[0]] is not None:
            ax.annotate(cell["level"], (cell["flops_ratio"], cell["ratio"][metrics[0]]), fontsize=7)


def _plugin_bars(result: dict[str, Any], axes: Any) -> None:
    cells = [c for c in result["cells"] if c["level"] != result["reference"]]
    names = [f"{c['media']} c={c['concurrency']}" for c in cells]
    for ax, metric in zip(axes, ("requests_per_s", "ttft_p50_s"), strict=True):
        ax.bar(names, [c["ratio"][metric] or 0 for c in cells], color="C0")
        ax.axhline(1.0, color="grey", linestyle=":")
        if metric == "requests_per_s":
            ax.axhline(PLUGIN_GOAL, color="C3", linestyle="--", label=f"goal {PLUGIN_GOAL}")
            ax.legend(fontsize=7)
        ax.set_ylabel(f"{metric}: AIM off / plain vLLM")
        ax.tick_params(axis="x", rotation=30, labelsize=7)
