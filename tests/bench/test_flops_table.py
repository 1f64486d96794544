"""bench/flops_table.py's Qwen3-VL rows: the figures `aim-vllm flops` prints, and the results file."""

from __future__ import annotations

import importlib
import json
import types
from pathlib import Path

import pytest

from aim_vllm.cli import main as cli
from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.schedule import AimSchedule, preset_schedule

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "flops-table.json"


@pytest.fixture(scope="module")
def flops_table() -> types.ModuleType:
    return importlib.import_module("bench.flops_table")


def test_qwen3_vl_rows_are_what_aim_vllm_flops_prints(flops_table: types.ModuleType, capsys) -> None:
    """Every size and level: the CLI's executed TFLOPs and ratio, its schedule, and the schedules
    the levels name (`off`, `AimSchedule(0.25)`, the `balanced` preset)."""
    rows = flops_table.qwen3_vl_table()
    assert [(r["arch"], r["level"]) for r in rows] == [
        (arch, level) for arch in flops_table.QWEN3_VL for level in ("off", "merge:0.25", "balanced")
    ]
    for row in rows:
        argv = [
            "flops",
            "--arch",
            row["arch"],
            "--frames",
            "16",
            "--text-tokens",
            "100",
            "--level",
            row["level"],
        ]
        assert cli([*argv, "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert row["tflops"] == printed["aim_executed_tflops"] and row["ratio"] == printed["executed_ratio"]
        assert row["baseline_tflops"] == printed["baseline_tflops"]
        assert row["prune_layers"] == printed["prune_layers"] and row["merge_ratio"] == printed["merge_ratio"]
        layers = ARCHITECTURES[row["arch"]].llm.num_layers
        named = {
            "off": AimSchedule(),
            "merge:0.25": AimSchedule(0.25),
            "balanced": preset_schedule("balanced", layers),
        }
        expected = named[row["level"]]
        assert row["merge_ratio"] == expected.merge_ratio
        assert row["prune_layers"] == (list(expected.prune_layers) if expected.prune_layers else None)
        assert row["first_prune_layer"] == 3  # every published Qwen3-VL has 3 DeepStack levels
        assert row["prune_layers"] is None or row["prune_layers"][0] >= row["first_prune_layer"]
    moe = {r["level"]: r for r in rows if r["arch"] == "qwen3-vl-30b-a3b"}
    assert round(moe["off"]["tflops"], 2) == 15.34 and round(moe["balanced"]["tflops"], 2) == 2.51


def test_a_window_before_the_deepstack_layers_is_refused(flops_table: types.ModuleType, monkeypatch) -> None:
    """The DeepStack check can fail: a level pruning from layer 1 stops the table."""
    monkeypatch.setattr(flops_table, "QWEN3_VL_LEVELS", ("merge:0.25,prune:1-9",))
    with pytest.raises(AssertionError, match="starts before 3"):
        flops_table.qwen3_vl_table()


def test_the_results_file_holds_the_script_output(flops_table: types.ModuleType) -> None:
    """docs/results/flops-table.json is the script's output today (regenerate it when the model changes)."""
    saved = json.loads(RESULTS.read_text())
    tables = flops_table.all_tables()
    assert saved == [{"table": name, **row} for name, rows in tables.items() for row in rows]
