"""Compare two `aim-vllm eval` runs of the same items level by level, paired on the items both answered.

    .venv/bin/python scripts/compare_eval_runs.py RUN_A RUN_B --levels merge:0.25 merge:0.125 \
        --names content-aware spread --out docs/results/STEM.json

`aim-vllm eval --compare` pairs two levels of one run; this pairs one level across two runs
whose engines differ in something a level cannot name (here: Qwen2.5-VL merged tokens'
positions, content-aware by default or spread with `AIM_VLLM_SPREAD_POSITIONS=1`). Each level of
RUN_A is compared with the same level of RUN_B (`aim_vllm.evaluation.paired.compare`: paired
bootstrap interval, exact McNemar p, verdict), and the result is written in the shape of
`aim-vllm eval`'s paired.json (`{"comparisons": [...]}`, rendered by `scripts/render_docs.py`'s
`compare` kind), with the two runs' accuracies added per level.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aim_vllm.evaluation.levels import canonical_levels
from aim_vllm.evaluation.paired import compare
from aim_vllm.evaluation.report import hits_of, load_results


def compare_runs(run_a: Path, run_b: Path, levels: list[str], names: tuple[str, str]) -> dict:
    """{"comparisons": [...]}: each level of `run_a` (named `names[0]`) against `run_b`'s."""
    levels = canonical_levels(levels)
    hits = {}
    for run, name in zip((run_a, run_b), names, strict=True):
        for level, by_item in hits_of(load_results(run / "results.jsonl", levels)).items():
            if not by_item:
                raise ValueError(f"{run}: no answers at {level}")
            hits[f"{level} ({name})"] = by_item
    comparisons = []
    for level in levels:
        mine, theirs = f"{level} ({names[0]})", f"{level} ({names[1]})"
        paired = compare(mine, theirs, hits).to_json()
        accuracy = {n: sum(hits[f"{level} ({n})"].values()) / len(hits[f"{level} ({n})"]) for n in names}
        comparisons.append({**paired, "accuracy": accuracy})
    return {"comparisons": comparisons}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path, help="an `aim-vllm eval --out` directory")
    parser.add_argument("run_b", type=Path, help="the reference run, on the same items")
    parser.add_argument("--levels", nargs="+", required=True, help="levels both runs evaluated")
    parser.add_argument("--names", nargs=2, default=("a", "b"), help="labels of the two runs")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    record = compare_runs(args.run_a, args.run_b, args.levels, tuple(args.names))
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for c in record["comparisons"]:
        interval = f"{c['difference']:+.3f} ({c['low']:+.3f} to {c['high']:+.3f})"
        counts = f"lost {c['lost']} / gained {c['gained']}, p {c['p_value']:.2g}"
        print(f"{c['level']} vs {c['reference']}: {interval}, {counts}: {c['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
