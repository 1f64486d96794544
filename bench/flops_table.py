"""FLOPs tables from the project's FLOPs model: the paper's figures, every preset per architecture,
and the Qwen3-VL sizes on a 16-frame video at `off`, `merge:0.25` and `balanced`.

Run: .venv/bin/python bench/flops_table.py            (prints Markdown; --json for one JSON line per row)
No engine, no timing: pure arithmetic on the published model shapes (aim_vllm.core.architectures).
"""

from __future__ import annotations

import argparse
import json

from aim_vllm.commands.flops import llm_schedule
from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.budget import VisualLayout, estimate_flops
from aim_vllm.core.schedule import PRESETS, AimSchedule, first_prune_layer, preset_schedule
from aim_vllm.model_builders.qwen3_vl import VISION_CONFIGS

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


# Qwen3-VL: every published size, one video, the levels in the gateway grammar (`aim-vllm flops`).
QWEN3_VL = ("qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b", "qwen3-vl-30b-a3b")
QWEN3_VL_LEVELS = ("off", "merge:0.25", "balanced")


def qwen3_vl_table(frames: int = 16, text: int = 100) -> list[dict]:
    """Executed LLM prefill TFLOPs per Qwen3-VL size and level, as `aim-vllm flops` computes them
    (`commands.flops.llm_schedule`, then `estimate_flops`)."""
    rows = []
    for name in QWEN3_VL:
        spec = ARCHITECTURES[name]
        layout = spec.layout(frames=frames)
        # DeepStack adds visual features after layers 0..L-1: a window may start at L at the earliest.
        first = first_prune_layer({"vision_config": VISION_CONFIGS[name.removeprefix("qwen3-vl-")]})
        for level in QWEN3_VL_LEVELS:
            schedule = llm_schedule(level, spec, layout, text)
            if schedule.prunes and schedule.prune_layers[0] < first:
                raise AssertionError(
                    f"{name} {level}: prune window {schedule.prune_layers} starts before {first}"
                )
            est = estimate_flops(schedule, spec.llm, layout, text)
            rows.append(
                {
                    "arch": name,
                    "input": f"{frames} frames",
                    "text_tokens": text,
                    "level": level,
                    "merge_ratio": schedule.merge_ratio,
                    "prune_layers": list(schedule.prune_layers) if schedule.prune_layers else None,
                    "first_prune_layer": first,
                    "visual_tokens": f"{est.visual_in} -> {est.visual_merged}",
                    "baseline_tflops": est.baseline / TERA,
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


def all_tables() -> dict[str, list[dict]]:
    """Every table by its name (the `table` field of a `--json` line)."""
    return {"paper": paper_table(), "presets": preset_table(), "qwen3-vl": qwen3_vl_table()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tables = all_tables()
    if args.json:
        for name, rows in tables.items():
            for row in rows:
                print(json.dumps({"table": name, **row}))
        return
    print("## FLOPs vs the paper (LLM prefill, TFLOPs)\n\n" + markdown(tables["paper"]))
    print(
        "\n## Presets per architecture (executed TFLOPs, 100 text tokens)\n\n" + markdown(tables["presets"])
    )
    print("\n## Qwen3-VL, 16 frames: executed TFLOPs by level\n\n" + markdown(tables["qwen3-vl"]))


if __name__ == "__main__":
    main()
