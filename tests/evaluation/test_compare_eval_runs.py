"""`scripts/compare_eval_runs.py`: one level paired across two runs of the same items."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("compare_eval_runs", ROOT / "scripts" / "compare_eval_runs.py")
compare_eval_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_eval_runs)


def _run(root: Path, name: str, correct: dict[str, list[bool]]) -> Path:
    """An `aim-vllm eval --out` directory whose results.jsonl holds `correct[level][i]` for item i."""
    run = root / name
    run.mkdir()
    lines = [
        {"id": f"item-{i}", "level": level, "correct": hit}
        for level, hits in correct.items()
        for i, hit in enumerate(hits)
    ]
    lines.append({"id": "item-0", "level": "merge:0.25", "error": "timeout"})  # errors are not answers
    (run / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def test_each_level_is_paired_with_the_same_level_of_the_other_run(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", {"off": [True] * 4, "merge:0.25": [True, True, True, False]})
    b = _run(tmp_path, "b", {"off": [True] * 4, "merge:0.25": [False, False, True, True]})
    out = tmp_path / "compare.json"
    levels = ["off", "merge:0.25", "--names", "content-aware", "spread", "--out", str(out)]
    assert compare_eval_runs.main([str(a), str(b), "--levels", *levels]) == 0
    off, merged = json.loads(out.read_text())["comparisons"]
    assert (off["level"], off["reference"], off["difference"]) == ("off (content-aware)", "off (spread)", 0.0)
    assert (merged["n"], merged["lost"], merged["gained"]) == (4, 1, 2)
    assert merged["difference"] == pytest.approx(0.25)
    assert merged["accuracy"] == {"content-aware": 0.75, "spread": 0.5}


def test_a_level_one_run_lacks_is_an_error(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", {"off": [True]})
    b = _run(tmp_path, "b", {"off": [True], "merge:0.25": [True]})
    with pytest.raises(ValueError, match="no answers at merge:0.25"):
        compare_eval_runs.compare_runs(a, b, ["off", "merge:0.25"], ("a", "b"))
