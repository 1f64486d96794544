"""Per-level summary of evaluation results: accuracy with 95% intervals, FLOPs ratio, latency."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from aim_vllm.evaluation.levels import BASELINE_NAMES
from aim_vllm.evaluation.scoring import wilson_interval


def summarise(results_path: Path, levels: list[str], names: dict[str, str] | None = None) -> list[dict]:
    """One row per level (in `levels` order) from the results file."""
    by_level: dict[str, list[dict]] = {level: [] for level in levels}
    for line in results_path.read_text().splitlines():
        record = json.loads(line) if line.strip() else None
        if record and record["level"] in by_level and not record.get("error"):
            by_level[record["level"]].append(record)
    rows = []
    for level, records in by_level.items():
        n = len(records)
        correct = sum(r["correct"] for r in records)
        low, high = wilson_interval(correct, n)
        ratios = [r["aim"].get("flops_ratio", 1.0) for r in records]
        rows.append(
            {
                "name": (names or {}).get(level, level),
                "level": level,
                "n": n,
                "accuracy": correct / n if n else 0.0,
                "ci_low": low,
                "ci_high": high,
                "flops_ratio": statistics.fmean(ratios) if ratios else 1.0,
                "ttft_s": statistics.median(r["ttft_s"] for r in records) if records else 0.0,
                "latency_s": statistics.median(r["latency_s"] for r in records) if records else 0.0,
                "prompt_tokens": statistics.fmean(r["prompt_tokens"] for r in records) if records else 0.0,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| name | level | n | accuracy | 95% CI | LLM prefill FLOPs ratio | TTFT (s) | prompt tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | `{r['level']}` | {r['n']} | {r['accuracy']:.3f} | "
            f"{r['ci_low']:.3f}-{r['ci_high']:.3f} | {r['flops_ratio']:.3f} | {r['ttft_s']:.2f} | "
            f"{r['prompt_tokens']:.0f} |"
        )
    return "\n".join(lines)


def is_baseline(row: dict) -> bool:
    """A row of a baseline (another reduction, or one of AIM's two steps alone), not an AIM level."""
    return row["name"] in BASELINE_NAMES or "method:" in row["level"] or "importance:" in row["level"]


def plot(rows: list[dict], path: Path, title: str = "Accuracy vs LLM prefill FLOPs") -> None:
    """PNG: accuracy (95% interval bars) vs executed FLOPs ratio, and vs median TTFT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    colours = plt.get_cmap("tab20").colors
    for ax, key, label in (
        (axes[0], "flops_ratio", "LLM prefill FLOPs / AIM off"),
        (axes[1], "ttft_s", "TTFT (s)"),
    ):
        for index, r in enumerate(rows):
            err = [[r["accuracy"] - r["ci_low"]], [r["ci_high"] - r["accuracy"]]]
            ax.errorbar(
                r[key], r["accuracy"], yerr=err, fmt="s" if is_baseline(r) else "o", capsize=3,
                color=colours[index % len(colours)], label=r["name"],
            )  # fmt: skip
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), title="o AIM  ■ baseline")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
