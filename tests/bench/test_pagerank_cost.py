"""bench/pagerank_cost.py: one small run (two row blocks against one dense block)."""

from __future__ import annotations

import importlib
import json

import pytest


@pytest.mark.timeout(60)
def test_blocked_and_dense_agree_and_are_timed(capsys: pytest.CaptureFixture[str]) -> None:
    rows = importlib.import_module("bench.pagerank_cost").main(["--tokens", "1100", "300", "--repeats", "1"])
    assert [row["tokens"] for row in rows] == [1100, 300]
    assert all(row["blocked_s"] > 0 and row["dense_s"] > 0 for row in rows)
    assert rows[0]["max_abs_diff"] < 1e-6  # 1100 > the default 1024-row block: two blocks
    assert rows[1]["max_abs_diff"] == 0.0  # one block either way: the same computation
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0])["shape"] == "llava-onevision-0.5b"
