"""Level specs, baselines at AIM's token counts, and the report files."""

import json

import pytest

from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.budget import VisualLayout, estimate_flops
from aim_vllm.core.level import LevelError, parse_text
from aim_vllm.core.schedule import AimSchedule, preset_schedule
from aim_vllm.evaluation.levels import baselines_for, canonical_levels
from aim_vllm.evaluation.report import markdown, plot, summarise


def test_levels_are_canonical_text_levels() -> None:
    """One level per argument, in the gateway's grammar; written canonically, duplicates dropped."""
    assert canonical_levels(["off", " BALANCED", "prune:3-5,merge:.25", "balanced"]) == [
        "off",
        "balanced",
        "merge:0.25,prune:3-5",
    ]
    with pytest.raises(LevelError):
        canonical_levels(["off", "merge:0.25+prune:3-5"])
    with pytest.raises(ValueError):
        canonical_levels([])


def test_baselines_share_aims_counts_and_flops() -> None:
    """Pool/random/merge-only use AIM's merge ratio; FastV's keep fraction matches AIM's FLOPs."""
    spec = ARCHITECTURES["llava-onevision-0.5b"]
    layout = VisualLayout((196,) * 8, 1)
    levels = baselines_for("balanced", spec.llm, layout, 40)
    aim = preset_schedule("balanced", spec.llm.num_layers)
    assert set(levels) == {"aim-balanced", "pool", "random", "evs", "fastv", "merge-only", "prune-only"}
    knobs = {name: parse_text(level).schedule for name, level in levels.items()}  # all valid levels
    assert (
        knobs["pool"].merge_ratio
        == knobs["random"].merge_ratio
        == knobs["evs"].merge_ratio
        == aim.merge_ratio
    )
    assert knobs["pool"].merge_method == "pool" and knobs["fastv"].prune_method == "fastv"
    assert knobs["evs"].merge_method == "evs" and knobs["evs"].prune_layers == aim.prune_layers
    fastv = AimSchedule(aim.merge_ratio, knobs["fastv"].prune_layers, prune_keep=knobs["fastv"].prune_keep)
    target = estimate_flops(aim, spec.llm, layout, 40).executed
    assert estimate_flops(fastv, spec.llm, layout, 40).executed == pytest.approx(target, rel=0.02)


def test_summary_markdown_and_plot(tmp_path) -> None:
    results = tmp_path / "results.jsonl"
    records = [
        {
            "id": f"{i}",
            "level": level,
            "correct": i % k == 0,
            "ttft_s": 0.5,
            "latency_s": 1.0,
            "prompt_tokens": 100,
            "aim": {"flops_ratio": ratio},
            "error": "",
        }
        for level, k, ratio in (("off", 1, 1.0), ("balanced", 2, 0.2))
        for i in range(10)
    ]
    records.append({**records[0], "error": "HTTP 500"})  # errors are not counted
    results.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    rows = summarise(results, ["off", "balanced"], {"balanced": "aim-balanced"})
    assert [(r["name"], r["n"], r["accuracy"], r["flops_ratio"]) for r in rows] == [
        ("off", 10, 1.0, 1.0),
        ("aim-balanced", 10, 0.5, 0.2),
    ]
    assert "| aim-balanced | `balanced` | 10 | 0.500 |" in markdown(rows)
    plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_plot_marks_baselines_apart_from_aim_levels() -> None:
    from aim_vllm.evaluation.report import is_baseline

    def row(name: str, level: str) -> dict:
        return {"name": name, "level": level}

    aim = [row("off", "off"), row("merge:0.05", "merge:0.05"), row("aim-balanced", "merge:0.25,prune:3-5")]
    baselines = [
        row("merge:0.05,method:pool", "merge:0.05,method:pool"),
        row("fastv", "merge:0.25,prune:3-4,importance:fastv,keep:0.2"),
        row("prune-only", "merge:1,prune:3-5"),
    ]
    assert not any(map(is_baseline, aim)) and all(map(is_baseline, baselines))


def test_video_only_baselines_skip_image_items() -> None:
    from aim_vllm.evaluation.runner import applies

    image, video = {"media": [{"type": "image"}]}, {"media": [{"type": "video"}]}
    evs = "merge:0.25,method:evs,prune:3-5"
    assert applies(video, evs) and not applies(image, evs)
    assert applies(image, "merge:0.25,method:pool") and applies(image, "balanced")
