"""FLOPs tables from the project's FLOPs model: the paper's figures, and every preset per architecture.

Run: .venv/bin/python bench/flops_table.py            (prints Markdown; --json for one JSON line per row)
No engine, no timing: pure arithmetic on the published model shapes (aim_vllm.core.architectures).
"""

from __future__ import annotations

import argparse
import json

from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.budget import VisualLayout, estimate_flops
from aim_vllm.core.schedule import PRESETS, AimSchedule, preset_schedule

TERA = 1e12

# (label, arch, layout, text tokens, schedule, paper TFLOPs) — AIM arXiv:2412.03248, §4 / Table 1.
# The paper counts frame/image tokens only (no newline token), so these layouts do too.
PAPER_ROWS = [
    ("LLaVA-OV-7B, 32 frames, baseline", "llava-onevision-7b", (196,) * 32, 100, AimSchedule(), 99.63),
    ("LLaVA-OV-7B, 32 frames, merge 25%", "llava-onevision-7b", (196,) * 32, 100, AimSchedule(0.25), 22.90),
    (
        "LLaVA-OV-7B, 32 frames, AIM default",
        "llava-onevision-7b",
        (196,) * 32,
        100,
        AimSchedule(0.25, (14, 22)),
        14.76,
    ),
    ("LLaVA-1.5-7B, baseline", "llava-1.5-7b", (576,), 40, AimSchedule(), 8.18),
    ("LLaVA-1.5-7B, merge 252 + prune", "llava-1.5-7b", (576,), 40, AimSchedule(252 / 576, (13, 21)), 2.22),
    ("LLaVA-1.5-7B, merge 72 + prune", "llava-1.5-7b", (576,), 40, AimSchedule(72 / 576, (13, 21)), 1.00),
]


def paper_table() -> list[dict]:
    rows = []
    for label, arch, frames, text, schedule, paper in PAPER_ROWS:
        est = estimate_flops(schedule, ARCHITECTURES[arch].llm, VisualLayout(frames), text)
        rows.append(
            {
                "setting": label,
                "paper_tflops": paper,
                "ours_tflops": est.paper / TERA,
                "executed_tflops": est.executed / TERA,
            }
        )
    return rows


def preset_table(frames: int = 32, images: int = 1, text: int = 100) -> list[dict]:
    rows = []
    for name, spec in ARCHITECTURES.items():
        layout = spec.layout(images=images) if name == "llava-1.5-7b" else spec.layout(frames=frames)
        for preset in PRESETS:
            schedule = preset_schedule(preset, spec.llm.num_layers)
            est = estimate_flops(schedule, spec.llm, layout, text)
            rows.append(
                {
                    "arch": name,
                    "input": f"{images} image" if name == "llava-1.5-7b" else f"{frames} frames",
                    "preset": preset,
                    "merge_ratio": schedule.merge_ratio,
                    "prune_layers": list(schedule.prune_layers) if schedule.prune_layers else None,
                    "visual_tokens": f"{est.visual_in} -> {est.visual_merged}",
                    "tflops": est.executed / TERA,
                    "ratio": est.executed_ratio,
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [
            f"{v:.2f}" if isinstance(v, float) and k != "merge_ratio" else str(v) for k, v in row.items()
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tables = {"paper": paper_table(), "presets": preset_table()}
    if args.json:
        for name, rows in tables.items():
            for row in rows:
                print(json.dumps({"table": name, **row}))
        return
    print("## FLOPs vs the paper (LLM prefill, TFLOPs)\n\n" + markdown(tables["paper"]))
    print(
        "\n## Presets per architecture (executed TFLOPs, 100 text tokens)\n\n" + markdown(tables["presets"])
    )


if __name__ == "__main__":
    main()
