"""`aim-vllm bench` outputs: Markdown tables, the plugin verdict, result.json/.md/.png, the summary line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench.report import (
    comparison_table,
    markdown,
    plugin_verdict,
    stock_verdict,
    summary_line,
    write_outputs,
)

META = {
    "model": "/m", "model_label": "tiny", "device": "cpu", "cpu_count": 2, "vllm": "0.32.0",
    "git_commit": "abc", "duration_s": 12.0, "loadavg_start": [1.0], "loadavg_end": [2.0],
    "settings": {"rounds": 1},
}  # fmt: skip


def _cell(level: str, flops: float | None, ttft: float, rps: float, ref: dict | None = None) -> dict:
    ratio = {
        "ttft_p50_s": ttft / ref["ttft_p50_s"] if ref else 1.0,
        "tpot_p50_s": None,
        "e2e_p50_s": 1.0,
        "requests_per_s": rps / ref["requests_per_s"] if ref else 1.0,
        "output_tokens_per_s": 1.0,
    }
    return {
        "media": "video8", "concurrency": 1, "level": level, "flops_ratio": flops, "ttft_p50_s": ttft,
        "tpot_p50_s": None, "e2e_p50_s": ttft + 1, "requests_per_s": rps, "output_tokens_per_s": 8 * rps,
        "requests": 2, "errors": 0, "ratio": ratio,
    }  # fmt: skip


@pytest.fixture
def levels_result() -> dict:
    off = _cell("off", 1.0, 4.0, 0.2)
    return {
        "bench": "aim-vllm bench", "mode": "levels", "meta": META, "reference": "off",
        "levels": {"off": "off", "balanced": "balanced"},
        "cells": [off, _cell("balanced", 0.1, 2.0, 0.5, off)],
        "split": {"video8": [{
            "level": "balanced", "pairs": 1, "flops_ratio": 0.1, "ttft_fresh_p50_s": 2.0, "e2e_speedup": 2.0,
            "amdahl_bound_speedup": 2.5, "ttft_repeat_p50_s": 0.2, "llm_speedup": 5.0, "flops_speedup": 10.0,
            "llm_speedup_vs_flops": 0.5,
        }]},
    }  # fmt: skip


def test_markdown_levels(levels_result: dict) -> None:
    """One row per cell with ratios to off; missing values print as '-'; the split table follows."""
    text = markdown(levels_result)
    assert "| video8 | 1 | balanced | 0.100 | 2.000 | 0.50 | - | - |" in text
    assert "xoff" in text and "Where the time goes" in text
    assert "| video8 | balanced | 0.100 | 2.000 | 2.00 | 2.50 | - | 0.200 | 5.00 | 10.00 | 0.50 | 1 |" in text
    assert text.count("\n|") == 2 + 2 + 2 + 1  # header+rule+rows, twice


def test_plugin_verdict() -> None:
    """The worst aim-off/plain throughput ratio decides, against the 0.98 goal."""
    plain = _cell("plain", None, 1.0, 1.0)
    result = {"reference": "plain", "cells": [plain, _cell("aim-off", 1.0, 1.0, 0.99, plain)]}
    assert "0.990 (meets" in plugin_verdict(result)
    result["cells"].append(_cell("aim-off", 1.0, 1.0, 0.9, plain))
    assert "0.900 (misses" in plugin_verdict(result)
    assert "no throughput" in plugin_verdict({"reference": "plain", "cells": [plain]})
    assert "round by round" not in plugin_verdict(result)


def test_plugin_verdict_reports_round_spread() -> None:
    """Per-round ratios (the run's noise) follow the verdict: median and range over cell-rounds."""
    plain = _cell("plain", None, 1.0, 1.0)
    aim = _cell("aim-off", 1.0, 1.0, 0.95, plain) | {"round_ratio_requests_per_s": [0.9, 1.1, None, 1.0]}
    line = plugin_verdict({"reference": "plain", "cells": [plain, aim]})
    assert "0.950 (misses" in line and "median 1.000, range 0.900-1.100 over 3 cell-rounds" in line


def test_write_outputs(tmp_path: Path, levels_result: dict) -> None:
    """JSON round-trips, Markdown is the report, the PNG is a real image file."""
    paths = write_outputs(levels_result, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == levels_result
    assert paths["markdown"].read_text() == markdown(levels_result)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["plot"].stat().st_size > 10_000


def test_write_outputs_without_matplotlib(
    tmp_path: Path, levels_result: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-dev install still gets result.json and result.md."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a),
    )
    paths = write_outputs(levels_result, tmp_path)
    assert set(paths) == {"json", "markdown"} and not (tmp_path / "result.png").exists()


def test_write_outputs_plugin_mode(tmp_path: Path) -> None:
    plain = _cell("plain", None, 1.0, 1.0)
    result = {
        "bench": "aim-vllm bench", "mode": "plugin-overhead", "meta": META, "reference": "plain",
        "levels": {"plain": None, "aim-off": "off"},
        "cells": [plain, _cell("aim-off", 1.0, 1.0, 0.99, plain)],
    }  # fmt: skip
    paths = write_outputs(result, tmp_path)
    assert "plugin cost" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_summary_line_is_compact(levels_result: dict) -> None:
    line = summary_line(levels_result, {"json": Path("r/result.json")})
    assert line["device"] == "cpu" and line["outputs"] == {"json": "r/result.json"}
    assert line["cells"][1]["ratio"]["ttft_p50_s"] == 0.5 and "ttft_p90_s" not in line["cells"][1]
    json.dumps(line)


def _evs_result() -> dict:
    """EVS mode with both stock methods: EVS faster at c=1, VidCom2 at c=4; AIM levels in between."""
    figures = {  # level: (prompt tokens, FLOPs, {concurrency: (TTFT, req/s)})
        "evs": (180, None, {1: (2.0, 0.5), 4: (6.0, 0.6)}),
        "vidcom2": (180, None, {1: (2.5, 0.4), 4: (5.0, 0.8)}),
        "off": (600, 1.0, {1: (8.0, 0.12), 4: (20.0, 0.2)}),
        "aim-tokens": (182, 0.2, {1: (1.6, 0.55), 4: (5.0, 0.8)}),
        "aim-tokens+encoder": (182, 0.2, {1: (1.0, 0.8), 4: (3.0, 1.2)}),
    }
    cells = [
        {"media": "video8", "concurrency": c, "level": level, "prompt_tokens": tokens, "flops_ratio": flops,
         "ttft_p50_s": ttft, "requests_per_s": rps, "ratio": {}}
        for level, (tokens, flops, by_c) in figures.items() for c, (ttft, rps) in by_c.items()
    ]  # fmt: skip
    split = [{"level": "evs", "ttft_repeat_p50_s": 0.4}, {"level": "aim-tokens", "ttft_repeat_p50_s": 0.25}]
    return {
        "bench": "aim-vllm bench", "mode": "evs", "meta": META, "reference": "off", "evs_rate": 0.75,
        "evs_methods": ["evs", "vidcom2"], "evs_cpu_fix": "the fix", "levels": dict.fromkeys(figures, "x"),
        "cells": cells, "split": {"video8": split},
    }  # fmt: skip


def test_comparison_table_has_every_level_against_the_better_stock_engine() -> None:
    """One row per media and level; xstock divides by the lowest stock TTFT and the highest stock
    requests/s of the same concurrency (EVS at c=1, VidCom2 at c=4); LLM part from the split."""
    table = comparison_table(_evs_result())
    lines = table.splitlines()
    assert lines[0] == (
        "| media | level | LLM tok | FLOPs | TTFT c=1 s | xstock | req/s c=1 | xstock | TTFT c=4 s | xstock "
        "| req/s c=4 | xstock | LLM part s |"
    )
    assert len(lines) == 2 + 5
    assert (
        "| video8 | vidcom2 | 180 | - | 2.500 | 1.25 | 0.400 | 0.80 | 5.000 | 1.00 | 0.800 | 1.00 | - |"
        in lines
    )
    tokens = (
        "| video8 | aim-tokens | 182 | 0.200 | 1.600 | 0.80 | 0.550 | 1.10 | 5.000 | 1.00 | 0.800 | 1.00 |"
    )
    assert f"{tokens} 0.250 |" in lines


def test_stock_verdict_and_evs_markdown() -> None:
    result = _evs_result()
    lines = stock_verdict(result)
    assert lines == [
        "- video8 c=1, against the better of evs/vidcom2: aim-tokens TTFT x0.80, req/s x1.10 (meets level); "
        "aim-tokens+encoder req/s x1.60 (meets >= 1.3)",
        "- video8 c=4, against the better of evs/vidcom2: aim-tokens TTFT x1.00, req/s x1.00 (meets level); "
        "aim-tokens+encoder req/s x1.50 (meets >= 1.3)",
    ]
    result["cells"][-1]["requests_per_s"] = 0.9  # aim-tokens+encoder at c=4: 1.125x VidCom2
    assert stock_verdict(result)[1].endswith("req/s x1.12 (misses >= 1.3)")
    text = markdown(result)
    assert "Every level side by side" in text and "Note: the fix." in text and "Goals (issue 30):" in text
