"""bench/pagerank_cost.py: one small run (layer and importance timed, scores against the dense definition)."""

from __future__ import annotations

import importlib
import json

import pytest


@pytest.mark.timeout(120)
def test_layer_and_importance_are_timed_and_scores_match_the_definition(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = importlib.import_module("bench.pagerank_cost").main(["--tokens", "600", "100", "--repeats", "1"])
    assert [row["tokens"] for row in rows] == [600, 100]
    for row in rows:
        assert row["layer_s"] > 0 and row["importance_s"] > 0
        assert row["importance_over_layer"] == pytest.approx(row["importance_s"] / row["layer_s"])
        assert row["qk_floor_over_layer"] == pytest.approx(row["qk_floor_s"] / row["layer_s"])
    assert rows[0]["max_abs_diff"] < 1e-6  # 600 tokens: ten row blocks of the default 64
    assert rows[1]["max_abs_diff"] < 1e-6
    assert json.loads(capsys.readouterr().out.splitlines()[0])["shape"] == "llava-onevision-0.5b"
