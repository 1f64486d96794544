"""bench/gpu_prefill.py on CPU: the smoke path (`--device cpu --layers 2 --frames 4`) and its pieces.

The 7B widths take minutes on a small CPU, so the smoke runs the same code with `--shape toy`
(same structure, small widths), float32, one timed repeat.
"""

from __future__ import annotations

import importlib
import json
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def gpu_prefill() -> types.ModuleType:
    return importlib.import_module("bench.gpu_prefill")


@pytest.mark.timeout(60)
def test_cpu_smoke(gpu_prefill: types.ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every variant runs; FLOPs ratios and token counts follow the schedules; JSON lines and a table."""
    argv = ["--device", "cpu", "--layers", "2", "--frames", "4", "--shape", "toy", "--dtype", "float32"]
    result = gpu_prefill.main([*argv, "--repeats", "1", "--warmup", "0", "--out", str(tmp_path / "r.json")])
    rows = {row["variant"]: row for row in result["variants"]}
    assert list(rows) == ["off", "merge", "prune", "aim"]
    assert rows["off"]["flops_ratio"] == 1.0 and rows["off"]["speedup"] == 1.0
    assert rows["merge"]["visual_tokens"] == "784 -> 196 -> 196"
    assert rows["prune"]["prune_layers"] == [1, 2] and rows["prune"]["visual_tokens"].endswith("-> 0")
    assert rows["aim"]["flops_ratio"] < rows["merge"]["flops_ratio"] < 1.0
    assert all(row["ms_median"] > 0 and row["speedup"] > 0 for row in rows.values())
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0])["llm"]["num_layers"] == 2 and "| aim |" in lines[-1]
    assert json.loads((tmp_path / "r.json").read_text())["config"]["frames"] == 4


def test_pruning_keeps_text_and_top_visual_rows(gpu_prefill: types.ModuleType) -> None:
    """Rows leaving a pruning layer: all text plus the kept visual count; later layers see only those."""
    torch.manual_seed(0)
    shape = replace(gpu_prefill.SHAPES["toy"], num_layers=1)
    layer = gpu_prefill.init_layers(shape, "cpu", torch.float32)[0]
    n, visual = 30, torch.zeros(30, dtype=torch.bool)
    visual[5:25] = True
    cos, sin = gpu_prefill.rope_tables(torch.arange(n), shape.head_dim, torch.float32)
    rows = gpu_prefill.Rows(torch.randn(n, shape.hidden_size), cos, sin, visual)
    pruned = gpu_prefill.layer_forward(layer, rows, shape, visual_kept=4)
    assert pruned.hidden.shape == (10 + 4, shape.hidden_size) and int(pruned.is_visual.sum()) == 4
    full = gpu_prefill.layer_forward(layer, rows, shape, visual_kept=None)
    kept_text = ~pruned.is_visual
    torch.testing.assert_close(pruned.hidden[kept_text], full.hidden[~visual])  # removal after attention


def test_rejects_bad_arguments(gpu_prefill: types.ModuleType) -> None:
    with pytest.raises(SystemExit):
        gpu_prefill.parse_args(["--variants", "off,fast"])
    with pytest.raises(SystemExit):
        gpu_prefill.parse_args(["--frames", "0"])
