"""Paired comparisons of two levels asked the same items: difference, interval, McNemar test.

Two levels that answered the same items are paired: on item i each is right (1) or wrong (0), and
the item's difference is d_i = level_i - reference_i in {-1, 0, +1}. Then

    difference = mean(d) = (gained - lost) / n

where `lost` counts items the reference got right and the level wrong, `gained` the reverse (the
discordant pairs) and n the items both answered. Items both got right or both got wrong say
nothing about which level is better, so the comparison is much tighter than two unpaired
accuracy intervals, and "within the reference's interval" is never evidence of no loss: a level
losing 10 points can sit inside a wide interval of the reference.

- The interval is a paired percentile bootstrap: the items are resampled with replacement
  (`BOOTSTRAP_RESAMPLES` times, fixed seed) and mean(d) recomputed. d takes three values, so a
  resample is a multinomial draw of (lost, tied, gained) counts: exactly the item bootstrap, cheap.
- The test is McNemar's exact test: under "no difference" each discordant item is lost or gained
  with probability 1/2, so lost ~ Binomial(lost + gained, 1/2); p is two-sided (twice the smaller
  tail, capped at 1).
- The verdict reads the interval against a margin: "no loss beyond 5 points" when its lower end
  is above -0.05; "loss" when the interval is below 0 and McNemar's p < 0.05 (`verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
NO_LOSS_MARGIN = 0.05  # accuracy points a level may lose and still be called "no loss"
SIGNIFICANCE = 0.05  # McNemar p below which a loss is called one
_SPREAD_KEYS = (
    "accuracy_sd", "accuracy_low", "accuracy_high", "difference_sd", "difference_low", "difference_high",
)  # fmt: skip


@dataclass(frozen=True)
class PairedDifference:
    """`level` against `reference` on the `n` items both answered."""

    level: str
    reference: str
    n: int
    difference: float  # accuracy(level) - accuracy(reference) on those items
    low: float  # 95% paired bootstrap interval of `difference`
    high: float
    lost: int  # reference right, level wrong
    gained: int  # reference wrong, level right
    p_value: float  # exact two-sided McNemar test on (lost, gained)

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high, self.n, self.p_value)

    def to_json(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value of `lost` vs `gained` discordant pairs (1.0 for none)."""
    if lost < 0 or gained < 0:
        raise ValueError(f"discordant counts must be >= 0, got lost={lost}, gained={gained}")
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(lost, gained) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_interval(
    lost: int,
    tied: int,
    gained: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of mean(d) over item resamples of (lost, tied, gained) items.

    Equivalent to resampling the n = lost + tied + gained items with replacement: the counts of a
    resample are Multinomial(n, (lost, tied, gained) / n). (0, 0) for no items.
    """
    n = lost + tied + gained
    if n == 0:
        return 0.0, 0.0
    draws = resampled_differences(lost, tied, gained, resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def resampled_differences(lost: int, tied: int, gained: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples] mean(d) of item resamples drawn with `seed` (see `bootstrap_interval`)."""
    n = lost + tied + gained
    counts = np.random.default_rng(seed).multinomial(n, np.array([lost, tied, gained]) / n, size=resamples)
    return (counts[:, 2] - counts[:, 0]) / n


def compare(
    level: str,
    reference: str,
    hits: Mapping[str, Mapping[str, bool]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedDifference:
    """`level` vs `reference` from hits[level][item id] = correct, on the ids both answered."""
    mine, theirs = hits.get(level, {}), hits.get(reference, {})
    shared = [item for item in mine if item in theirs]
    lost = sum(theirs[i] and not mine[i] for i in shared)
    gained = sum(mine[i] and not theirs[i] for i in shared)
    n = len(shared)
    low, high = bootstrap_interval(lost, n - lost - gained, gained, resamples, seed)
    difference = (gained - lost) / n if n else 0.0
    p_value = mcnemar_exact(lost, gained)
    return PairedDifference(level, reference, n, difference, low, high, lost, gained, p_value)


def verdict(low: float, high: float, n: int, p_value: float, margin: float = NO_LOSS_MARGIN) -> str:
    """What the paired interval (low, high) of a difference says against a `margin` of loss.

    A loss needs the interval below 0 and McNemar's p < 0.05: with a handful of discordant items
    the percentile bootstrap can exclude 0 when the exact test does not (4 lost, 0 gained of 96:
    interval -0.083 to -0.010, p = 0.125), and the exact test is the one to trust there.
    """
    points = f"{round(margin * 100):d} points"
    if n == 0:
        return "no paired items"
    if high < 0 and p_value < SIGNIFICANCE:
        return f"loss, under {points}" if low > -margin else "loss"
    if low > -margin:
        return f"no loss beyond {points}"
    return "inconclusive"


def resample_spread(hits: Mapping[str, Mapping[str, bool]], reference: str, seeds: int) -> dict:
    """Accuracy and difference-vs-`reference` spread over `seeds` item resamples (seeds 0..N-1).

    Each resample draws the reference's items with replacement (one draw shared by every level, so
    the comparison stays paired; a level scores the drawn items it answered). Returns per level
    the standard deviation and 2.5/97.5 percentiles of its accuracy and of its difference, and the
    share of resamples in which the levels rank (by accuracy) as they do on all items.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    items = list(hits.get(reference, {}))
    levels = [level for level in hits if hits[level]]
    table = {level: np.array([float(hits[level].get(i, np.nan)) for i in items]) for level in levels}
    full = _ranking({level: _mean(v) for level, v in table.items()})
    accuracy: dict[str, list[float]] = {level: [] for level in levels}
    agree = 0
    for seed in range(seeds):
        draw = np.random.default_rng(seed).integers(len(items), size=len(items))
        scores = {level: _mean(v[draw]) for level, v in table.items()}
        for level, score in scores.items():
            accuracy[level].append(score)
        agree += _ranking(scores) == full
    return {
        "seeds": seeds,
        "ranking_held": agree / seeds,
        "levels": {level: _spread(accuracy[level], accuracy[reference]) for level in levels},
    }


def _mean(hits: np.ndarray) -> float:
    """Mean of the answered entries (NaN: not asked), NaN if none."""
    answered = hits[~np.isnan(hits)]
    return float(answered.mean()) if answered.size else math.nan


def _spread(accuracy: list[float], reference: list[float]) -> dict[str, float]:
    a = np.array(accuracy)
    d = a - np.array(reference)
    a, d = a[~np.isnan(a)], d[~np.isnan(d)]
    if not a.size:
        return dict.fromkeys(_SPREAD_KEYS, math.nan)
    return {
        "accuracy_sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "accuracy_low": float(np.quantile(a, 0.025)),
        "accuracy_high": float(np.quantile(a, 0.975)),
        "difference_sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
        "difference_low": float(np.quantile(d, 0.025)),
        "difference_high": float(np.quantile(d, 0.975)),
    }


def _ranking(scores: dict[str, float]) -> list[tuple[str, ...]]:
    """Levels grouped by equal score, best first (ties are one group, so a tie is not a swap)."""
    groups: dict[float, list[str]] = {}
    for level, score in scores.items():
        if math.isnan(score):
            continue
        groups.setdefault(round(score, 12), []).append(level)
    return [tuple(sorted(groups[s])) for s in sorted(groups, reverse=True)]
