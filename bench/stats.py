"""Summaries of measured requests, and their ratios to the reference level of the same run.

Latencies are summarised by percentiles over every successful request of a cell (all rounds);
throughput is completed requests (or output tokens) divided by the summed wall time of the
cell's phases. A ratio is `level / reference` for the same media and concurrency: below 1 is
better for latencies, above 1 for throughputs.

Where the time goes (split phases): with the reference level's encoder share
s = (TTFT_fresh - TTFT_repeat) / TTFT_fresh, a level that cuts LLM prefill FLOPs to a fraction f
can speed the first token up by at most 1 / (s + (1 - s) f) (Amdahl), since it leaves the vision
encoder as it is. A level that merges inside the encoder (`usage.aim.encoder_keep` < 1) is not
bounded so; its encoder part (fresh minus repeat) gets its own speedup.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.client import PhaseResult, RequestResult

RATIO_METRICS = ("ttft_p50_s", "tpot_p50_s", "e2e_p50_s", "requests_per_s", "output_tokens_per_s")
LOWER_IS_BETTER = frozenset({"ttft_p50_s", "tpot_p50_s", "e2e_p50_s"})


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile `q` in [0, 100] of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _spread(values: list[float], prefix: str) -> dict[str, float | None]:
    """p50, p90 and mean of `values` under `prefix`_* keys (None when there are none)."""
    if not values:
        return {f"{prefix}_p50_s": None, f"{prefix}_p90_s": None, f"{prefix}_mean_s": None}
    return {
        f"{prefix}_p50_s": percentile(values, 50),
        f"{prefix}_p90_s": percentile(values, 90),
        f"{prefix}_mean_s": statistics.fmean(values),
    }


def _mean_or_none(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def aim_summary(results: list[RequestResult]) -> dict[str, Any]:
    """What the engine reported in `usage.aim` (means over requests; None without the plugin)."""
    reported = [r.aim for r in results if r.aim]
    pruning = Counter(str(a.get("pruning")) for a in reported).most_common(1)
    return {
        "flops_ratio": _mean_or_none([a["flops_ratio"] for a in reported if "flops_ratio" in a]),
        "visual_tokens_in": _mean_or_none(
            [a["visual_tokens_in"] for a in reported if "visual_tokens_in" in a]
        ),
        "visual_tokens_merged": _mean_or_none(
            [a["visual_tokens_merged"] for a in reported if "visual_tokens_merged" in a]
        ),
        "pruning": pruning[0][0] if pruning else None,
        "encoder_keep": _mean_or_none([a.get("encoder_keep", 1.0) for a in reported]),
    }


def summarise_load(phases: list[PhaseResult]) -> dict[str, Any]:
    """One cell's latencies, throughputs and AIM figures over all its phases."""
    results = [r for phase in phases for r in phase.results]
    ok = [r for r in results if r.ok]
    wall = sum(phase.wall_s for phase in phases)
    tpots = [r.tpot_s for r in ok if r.tpot_s is not None]
    return {
        "requests": len(ok),
        "errors": len(results) - len(ok),
        "first_error": next((r.error for r in results if r.error), None),
        **_spread([r.ttft_s for r in ok], "ttft"),
        **_spread(tpots, "tpot"),
        **_spread([r.e2e_s for r in ok], "e2e"),
        "requests_per_s": len(ok) / wall if wall > 0 else None,
        "round_requests_per_s": [
            sum(r.ok for r in phase.results) / phase.wall_s if phase.wall_s > 0 else None for phase in phases
        ],
        "output_tokens_per_s": sum(r.output_tokens for r in ok) / wall if wall > 0 else None,
        "prompt_tokens": _mean_or_none([r.prompt_tokens for r in ok]),
        "output_tokens": _mean_or_none([r.output_tokens for r in ok]),
        "wall_s": wall,
        **aim_summary(ok),
    }


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing or the reference is zero."""
    if value is None or not reference:
        return None
    return value / reference


def add_ratios(cells: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Each cell with `ratio`: its RATIO_METRICS over those of the reference level's cell.

    Cells are dicts with `media`, `concurrency` and `level`; the reference cell is the one of
    the same media and concurrency whose level is `reference` (no ratios without one).
    """
    by_key = {(c["media"], c["concurrency"]): c for c in cells if c["level"] == reference}
    out = []
    for cell in cells:
        base = by_key.get((cell["media"], cell["concurrency"]))
        ratios = {m: ratio(cell.get(m), base.get(m)) if base else None for m in RATIO_METRICS}
        out.append({**cell, "ratio": ratios, "round_ratio_requests_per_s": _round_ratios(cell, base)})
    return out


def _round_ratios(cell: dict[str, Any], base: dict[str, Any] | None) -> list[float | None] | None:
    """requests/s over the reference's, phase by phase (phase i of every cell ran in round i)."""
    mine, theirs = cell.get("round_requests_per_s"), (base or {}).get("round_requests_per_s")
    if not mine or not theirs or len(mine) != len(theirs):
        return None
    return [ratio(a, b) for a, b in zip(mine, theirs, strict=True)]


def amdahl_bound(encoder_share: float, flops_ratio: float) -> float:
    """Largest end-to-end TTFT speedup when only the LLM part (share 1 - s) scales with FLOPs."""
    return 1.0 / (encoder_share + (1.0 - encoder_share) * flops_ratio)


def borrow_flops(cells: list[dict[str, Any]], same_flops: dict[str, str]) -> list[dict[str, Any]]:
    """Cells of a level without `usage.aim` (e.g. stock EVS) given the FLOPs ratio of the level
    that runs as many tokens in every layer (`same_flops`: label -> label), same media and
    concurrency, when their requests had as many prompt tokens; otherwise it stays unknown."""
    by_cell = {(c["media"], c["concurrency"], c["level"]): c for c in cells}
    out = []
    for cell in cells:
        source = by_cell.get((cell["media"], cell["concurrency"], same_flops.get(cell["level"])))
        if source is not None and cell.get("flops_ratio") is None and _same_tokens(cell, source):
            cell = {**cell, "flops_ratio": source.get("flops_ratio")}
        out.append(cell)
    return out


def _same_tokens(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("prompt_tokens") is not None and a.get("prompt_tokens") == b.get("prompt_tokens")


def summarise_split(
    pairs: dict[str, list[tuple[RequestResult, RequestResult]]],
    reference: str,
    same_flops: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Per level of one media kind: end-to-end and LLM-part TTFT, speedups, the Amdahl bound.

    `same_flops` (label -> label): a level without `usage.aim` takes the other's FLOPs ratio.
    """
    medians, tokens, encoder_keeps = {}, {}, {}
    for label, level_pairs in pairs.items():
        good = [(f, r) for f, r in level_pairs if f.ok and r.ok]
        if good:
            aim = aim_summary([f for f, _ in good])
            medians[label] = (
                statistics.median(f.ttft_s for f, _ in good),
                statistics.median(r.ttft_s for _, r in good),
                aim["flops_ratio"],
                len(good),
            )
            tokens[label] = statistics.median(f.prompt_tokens for f, _ in good)
            encoder_keeps[label] = aim["encoder_keep"] or 1.0
    for label, source in (same_flops or {}).items():
        # as many tokens in every layer: the same FLOPs
        if (
            label in medians
            and source in medians
            and medians[label][2] is None
            and tokens[label] == tokens[source]
        ):
            medians[label] = (*medians[label][:2], medians[source][2], medians[label][3])
    if reference not in medians:
        return []
    ref_fresh, ref_repeat, _, _ = medians[reference]
    share = min(1.0, max(0.0, (ref_fresh - ref_repeat) / ref_fresh))
    rows = []
    for label, (fresh, repeat, flops, count) in medians.items():
        known = flops is not None  # unknown: a level without usage.aim and no equal-token twin
        bounded = known and encoder_keeps[label] >= 1.0  # Amdahl: the encoder as it is
        rows.append(
            {
                "level": label,
                "pairs": count,
                "ttft_fresh_p50_s": fresh,
                "ttft_repeat_p50_s": repeat,
                "encoder_share_ref": share,
                "flops_ratio": flops,
                "e2e_speedup": ref_fresh / fresh,
                "amdahl_bound_speedup": amdahl_bound(share, flops) if bounded else None,
                "encoder_keep": encoder_keeps[label],
                "encoder_speedup": ratio(ref_fresh - ref_repeat, fresh - repeat),
                "llm_speedup": ref_repeat / repeat,
                "flops_speedup": 1.0 / flops if known else None,
                "llm_speedup_vs_flops": (ref_repeat / repeat) * flops if known else None,
            }
        )
    return rows
