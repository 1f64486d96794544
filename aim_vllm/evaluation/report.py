"""Per-level summary of evaluation results: accuracy, the paired difference against a reference
level (`off`) with its interval and McNemar p-value (`paired`), FLOPs ratio, latency."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from aim_vllm.evaluation.levels import BASELINE_NAMES
from aim_vllm.evaluation.paired import (
    BOOTSTRAP_RESAMPLES,
    NO_LOSS_MARGIN,
    SIGNIFICANCE,
    PairedDifference,
    compare,
)
from aim_vllm.evaluation.scoring import wilson_interval

PAIRED_NOTE = (
    f"Δ: accuracy minus the reference's on the items both answered; interval: paired bootstrap "
    f"({BOOTSTRAP_RESAMPLES:,} item resamples, fixed seed); p: exact two-sided McNemar test on the "
    f'items the two disagree on. Verdict: "no loss beyond {NO_LOSS_MARGIN * 100:.0f} points" when the '
    f'interval\'s lower end is above -{NO_LOSS_MARGIN:.2f}; "loss" when the interval is below 0 and '
    f"p < {SIGNIFICANCE}. Lying within the reference's own interval is no such test."
)


def load_results(results_path: Path, levels: list[str]) -> dict[str, list[dict]]:
    """level -> its error-free result records, for each of `levels` (in order)."""
    by_level: dict[str, list[dict]] = {level: [] for level in levels}
    for line in results_path.read_text().splitlines():
        record = json.loads(line) if line.strip() else None
        if record and record["level"] in by_level and not record.get("error"):
            by_level[record["level"]].append(record)
    return by_level


def hits_of(by_level: dict[str, list[dict]]) -> dict[str, dict[str, bool]]:
    """level -> item id -> correct."""
    return {level: {r["id"]: bool(r["correct"]) for r in records} for level, records in by_level.items()}


def reference_level(levels: list[str]) -> str:
    """The level the others are compared with: `off` if evaluated, else the first."""
    return "off" if "off" in levels else levels[0]


def summarise(results_path: Path, levels: list[str], names: dict[str, str] | None = None) -> list[dict]:
    """One row per level (in `levels` order) from the results file, paired against `reference_level`."""
    by_level = load_results(results_path, levels)
    hits, reference = hits_of(by_level), reference_level(levels)
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
                **_paired_columns(compare(level, reference, hits)),
            }
        )
    return rows


def _paired_columns(paired: PairedDifference) -> dict:
    return {
        "reference": paired.reference,
        "paired_n": paired.n,
        "difference": paired.difference,
        "difference_low": paired.low,
        "difference_high": paired.high,
        "lost": paired.lost,
        "gained": paired.gained,
        "mcnemar_p": paired.p_value,
        "verdict": "reference" if paired.level == paired.reference else paired.verdict,
    }


def comparisons(results_path: Path, pairs: list[tuple[str, str]]) -> list[PairedDifference]:
    """Each (level, reference) pair named by the user, compared on the items both answered."""
    levels = list(dict.fromkeys(level for pair in pairs for level in pair))
    hits = hits_of(load_results(results_path, levels))
    return [compare(level, reference, hits) for level, reference in pairs]


def comparisons_markdown(pairs: list[PairedDifference]) -> str:
    lines = [
        "| level | reference | paired n | Δ accuracy (95% CI) | lost / gained | McNemar p | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
        lines.append(
            f"| `{p.level}` | `{p.reference}` | {p.n} | {p.difference:+.3f} "
            f"({p.low:+.3f} to {p.high:+.3f}) | {p.lost} / {p.gained} | {_p(p.p_value)} | {p.verdict} |"
        )
    return "\n".join(lines)


def spread_markdown(spread: dict, names: dict[str, str] | None = None) -> str:
    """The `paired.resample_spread` table: accuracy and Δ spread over the resamples."""
    lines = [
        f"Spread over {spread['seeds']} item resamples (seeds 0-{spread['seeds'] - 1}); the ranking of "
        f"the levels by accuracy held in {spread['ranking_held']:.0%} of them.",
        "",
        "| name | accuracy sd | accuracy 2.5-97.5% | Δ sd | Δ 2.5-97.5% |",
        "|---|---|---|---|---|",
    ]
    for level, s in spread["levels"].items():
        lines.append(
            f"| {(names or {}).get(level, level)} | {s['accuracy_sd']:.3f} | "
            f"{s['accuracy_low']:.3f}-{s['accuracy_high']:.3f} | {s['difference_sd']:.3f} | "
            f"{s['difference_low']:+.3f} to {s['difference_high']:+.3f} |"
        )
    return "\n".join(lines)


def _p(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def markdown(rows: list[dict]) -> str:
    reference = rows[0]["reference"] if rows else "off"
    lines = [
        f"| name | level | n | accuracy | 95% CI | Δ vs {reference} (paired 95% CI) | McNemar p | verdict "
        "| LLM prefill FLOPs ratio | TTFT (s) | prompt tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | `{r['level']}` | {r['n']} | {r['accuracy']:.3f} | "
            f"{r['ci_low']:.3f}-{r['ci_high']:.3f} | {_difference(r)} | {_row_p(r)} | "
            f"{r['verdict']} | {r['flops_ratio']:.3f} | {r['ttft_s']:.2f} | {r['prompt_tokens']:.0f} |"
        )
    return "\n".join([*lines, "", PAIRED_NOTE])


def _row_p(row: dict) -> str:
    return "—" if row["level"] == row["reference"] else _p(row["mcnemar_p"])


def _difference(row: dict) -> str:
    if row["level"] == row["reference"]:
        return "—"
    return f"{row['difference']:+.3f} ({row['difference_low']:+.3f} to {row['difference_high']:+.3f})"


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
