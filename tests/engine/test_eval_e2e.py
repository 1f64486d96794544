"""`aim-vllm eval` end to end on the tiny model: synthetic items through the gateway, all outputs."""

from __future__ import annotations

import json

from aim_vllm.cli import main
from aim_vllm.synthetic import write_dataset


def test_eval_runs_levels_and_baselines(gateway, aim_engine, tiny_model_dir, tmp_path) -> None:
    """Every (item, level) is answered and scored; a rerun resumes without asking again."""
    items_file = write_dataset(tmp_path / "data", n=3, seed=0)
    out = tmp_path / "eval"
    args = ["eval", "--data", str(items_file), "--url", gateway, "--out", str(out),
            "--levels", "off", "balanced", "--baselines-for", "balanced",
            "--model-config", str(tiny_model_dir / "config.json"), "--concurrency", "2"]  # fmt: skip
    assert main(args) == 0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    names = [row["name"] for row in summary]
    assert names[:2] == ["off", "balanced"]
    assert {"aim-balanced", "pool", "random", "evs", "fastv", "merge-only", "prune-only"} <= set(names)
    items = [json.loads(line) for line in items_file.read_text().splitlines()]
    videos = sum(item["media"][0]["type"] == "video" for item in items)
    by_name = {row["name"]: row for row in summary}
    assert by_name["evs"]["n"] == videos > 0  # EVS is asked of video items only
    assert all(row["n"] == len(items) for row in summary if row["name"] != "evs")
    assert all(not r["error"] for r in results) and len(results) == sum(row["n"] for row in summary)
    assert by_name["off"]["flops_ratio"] == 1.0
    assert by_name["pool"]["prompt_tokens"] == by_name["aim-balanced"]["prompt_tokens"]
    assert by_name["balanced"]["flops_ratio"] < 0.5
    assert (out / "accuracy_vs_flops.png").exists() and (out / "summary.md").exists()
    assert main(args) == 0  # resumable: nothing left to ask
    assert len((out / "results.jsonl").read_text().splitlines()) == len(results)
