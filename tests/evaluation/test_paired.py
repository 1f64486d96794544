"""Paired comparisons: McNemar's exact test, the paired bootstrap interval, verdicts, the spread."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from aim_vllm.evaluation.paired import (
    bootstrap_interval,
    compare,
    mcnemar_exact,
    resample_spread,
    resampled_differences,
    verdict,
)
from aim_vllm.evaluation.report import comparisons, comparisons_markdown, markdown, summarise


@pytest.mark.parametrize(
    ("lost", "gained", "p"),
    [
        (1, 9, 22 / 1024),  # 2 * (C(10,0) + C(10,1)) / 2^10
        (9, 1, 22 / 1024),  # two-sided: symmetric
        (0, 5, 2 / 32),  # 2 * C(5,0) / 2^5
        (3, 3, 1.0),  # twice a tail above 1/2 is capped
        (0, 0, 1.0),  # no discordant items: no evidence either way
        (2, 12, 2 * (1 + 14 + 91) / 2**14),
    ],
    ids=["1-9", "9-1", "0-5", "tie", "none", "2-12"],
)
def test_mcnemar_exact_known_values(lost: int, gained: int, p: float) -> None:
    """Hand-computed binomial tails: the p-value the report prints for each level vs off."""
    assert mcnemar_exact(lost, gained) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="lost=-1"):
        mcnemar_exact(-1, 3)


def test_bootstrap_interval_matches_the_normal_approximation() -> None:
    """400 items, 40 lost, none gained: mean(d) = -0.1, sd(d)/sqrt(n) = 0.015, so the 95% interval
    is about -0.1 +- 1.96 * 0.015 = (-0.129, -0.071)."""
    low, high = bootstrap_interval(40, 360, 0)
    assert low == pytest.approx(-0.1294, abs=0.005) and high == pytest.approx(-0.0706, abs=0.005)


def test_bootstrap_interval_is_seeded_and_degenerate_cases_are_exact() -> None:
    """Same seed, same interval (a report that reruns does not move); no discordant item: (0, 0)."""
    assert bootstrap_interval(7, 30, 3) == bootstrap_interval(7, 30, 3)
    first, second = (resampled_differences(7, 30, 3, 100, seed) for seed in (1, 2))
    assert not np.array_equal(first, second) and first.mean() == pytest.approx(-0.1, abs=0.02)
    assert bootstrap_interval(0, 50, 0) == (0.0, 0.0)
    assert bootstrap_interval(0, 0, 0) == (0.0, 0.0)
    assert bootstrap_interval(0, 0, 20) == (1.0, 1.0)


def test_paired_interval_is_tighter_than_two_unpaired_intervals() -> None:
    """96 items at off 0.5 where the level loses 1 and gains 1: its paired interval is about +-3
    points, while off's own Wilson interval spans 0.40-0.60 (the issue's case). Losing one more
    item already leaves a 5-point loss inside the interval: the verdict turns inconclusive."""
    hits = {"off": {f"{i}": i % 2 == 0 for i in range(96)}}
    hits["x"] = dict(hits["off"], **{"0": False, "1": True})
    paired = compare("x", "off", hits)
    assert (paired.n, paired.lost, paired.gained, paired.difference) == (96, 1, 1, 0.0)
    assert paired.low == pytest.approx(-1 / 32) and paired.high == pytest.approx(1 / 32)
    assert paired.verdict == "no loss beyond 5 points"
    hits["x"]["2"] = False
    assert compare("x", "off", hits).verdict == "inconclusive"


def test_compare_pairs_only_shared_items() -> None:
    """A level asked fewer items (EVS skips images) is compared on the items both answered."""
    hits = {"off": {"a": True, "b": True, "c": False}, "evs": {"b": False, "c": True}}
    paired = compare("evs", "off", hits)
    assert (paired.n, paired.lost, paired.gained, paired.difference) == (2, 1, 1, 0.0)
    assert paired.p_value == 1.0


@pytest.mark.parametrize(
    ("low", "high", "p", "expected"),
    [
        (-0.04, 0.02, 1.0, "no loss beyond 5 points"),
        (-0.06, 0.02, 0.5, "inconclusive"),  # inside off's interval is not enough
        (-0.20, -0.08, 0.001, "loss"),
        (-0.04, -0.01, 0.01, "loss, under 5 points"),
        (-0.083, -0.010, 0.125, "inconclusive"),  # 4 lost, 0 gained of 96: the exact test decides
        (0.01, 0.10, 0.01, "no loss beyond 5 points"),
    ],
)
def test_verdict_reads_the_paired_interval(low: float, high: float, p: float, expected: str) -> None:
    assert verdict(low, high, 100, p) == expected


def test_resample_spread_is_seeded_and_paired() -> None:
    """A level identical to off has zero difference in every resample; a worse level keeps its rank."""
    rng = np.random.default_rng(5)
    off = {f"{i}": bool(rng.random() < 0.8) for i in range(60)}
    worse = {i: hit and int(i) % 4 != 0 for i, hit in off.items()}
    hits = {"off": off, "same": dict(off), "worse": worse}
    spread = resample_spread(hits, "off", 50)
    assert spread == resample_spread(hits, "off", 50)
    same = spread["levels"]["same"]
    assert same["difference_sd"] == 0.0 and same["difference_low"] == same["difference_high"] == 0.0
    assert spread["levels"]["off"]["accuracy_sd"] > 0.02
    assert spread["levels"]["worse"]["difference_high"] < 0
    assert 0.0 < spread["ranking_held"] <= 1.0
    with pytest.raises(ValueError):
        resample_spread(hits, "off", 0)


def _write_results(path: Path, outcomes: dict[str, list[bool]]) -> None:
    records = [
        {"id": f"{i}", "level": level, "correct": hit, "ttft_s": 0.1, "latency_s": 0.2,
         "prompt_tokens": 10, "aim": {}, "error": ""}
        for level, hits in outcomes.items()
        for i, hit in enumerate(hits)
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_summary_rows_carry_the_paired_difference_against_off(tmp_path: Path) -> None:
    """Off is right on 40 of 50 items; `merge:0.05` loses 10 of them: Δ = -0.2, p = 2 / 2^10."""
    off = [i < 40 for i in range(50)]
    merged = [i < 30 for i in range(50)]
    _write_results(tmp_path / "results.jsonl", {"off": off, "merge:0.05": merged})
    rows = summarise(tmp_path / "results.jsonl", ["off", "merge:0.05"])
    by_level = {r["level"]: r for r in rows}
    assert by_level["off"]["verdict"] == "reference" and by_level["off"]["difference"] == 0.0
    row = by_level["merge:0.05"]
    assert (row["paired_n"], row["lost"], row["gained"]) == (50, 10, 0)
    assert row["difference"] == pytest.approx(-0.2)
    assert row["mcnemar_p"] == pytest.approx(2 / 1024)
    assert row["difference_high"] < 0 and row["verdict"] == "loss"
    table = markdown(rows)
    assert "Δ vs off (paired 95% CI)" in table and "| loss |" in table
    assert "-0.200 (" in table and "0.002" in table
    assert "| — | — | reference |" in table  # off is not tested against itself


def test_user_named_comparisons(tmp_path: Path) -> None:
    """--compare A B: merge:0.05 (AIM) against merge:0.05,method:pool on the same items."""
    aim = [True] * 30
    pool = [i % 3 != 0 for i in range(30)]  # loses 10 of 30
    _write_results(tmp_path / "results.jsonl", {"merge:0.05": aim, "merge:0.05,method:pool": pool})
    (paired,) = comparisons(tmp_path / "results.jsonl", [("merge:0.05,method:pool", "merge:0.05")])
    assert (paired.lost, paired.gained, paired.n) == (10, 0, 30)
    assert paired.p_value == pytest.approx(2 / 2**10) and paired.p_value < 0.05
    assert math.isclose(paired.difference, -1 / 3)
    assert "`merge:0.05,method:pool` | `merge:0.05` | 30 |" in comparisons_markdown([paired])


def test_eval_command_writes_comparisons_and_spread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`aim-vllm eval --compare A B --seeds N` (engine replaced by canned answers): summary.md has
    the per-level paired columns, the comparison and the spread; paired.json has both."""
    from aim_vllm.cli import main
    from aim_vllm.commands import eval as eval_command
    from aim_vllm.evaluation import runner
    from aim_vllm.synthetic import write_dataset

    data = write_dataset(tmp_path / "data", n=8, seed=0, types=("colour",))
    outcomes = {
        "off": [True] * 8,
        "merge:0.05": [True] * 8,
        "merge:0.05,method:pool": [i < 3 for i in range(8)],
    }

    async def canned(url, model, items, root, levels, out, *args, **kwargs) -> None:
        assert set(levels) == set(outcomes)  # --compare adds its levels to the run
        _write_results(out, {level: outcomes[level] for level in levels})

    monkeypatch.setattr(runner, "run_all", canned)
    monkeypatch.setattr(eval_command, "_first_model", lambda url: "m")
    out = tmp_path / "eval"
    args = ["eval", "--data", str(data), "--url", "http://x", "--out", str(out), "--levels", "off",
            "merge:0.05", "--compare", "merge:0.05,method:pool", "merge:0.05", "--seeds", "20"]  # fmt: skip
    assert main(args) == 0
    summary = (out / "summary.md").read_text()
    assert "Δ vs off (paired 95% CI)" in summary and "Spread over 20 item resamples" in summary
    assert "`merge:0.05,method:pool` | `merge:0.05` | 8 | -0.625" in summary
    paired = json.loads((out / "paired.json").read_text())
    assert paired["comparisons"][0]["lost"] == 5 and paired["spread"]["seeds"] == 20
