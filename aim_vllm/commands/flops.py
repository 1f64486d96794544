"""`aim-vllm flops`: LLM prefill TFLOPs of a published architecture with and without AIM."""

from __future__ import annotations

import argparse
import json

from aim_vllm.core.architectures import ARCHITECTURES, ArchSpec
from aim_vllm.core.budget import VisualLayout, estimate_flops, solve_budget
from aim_vllm.core.level import LevelError, parse_text
from aim_vllm.core.schedule import AimSchedule


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    media = parser.add_mutually_exclusive_group(required=True)
    media.add_argument("--frames", type=int, help="one video with this many frames")
    media.add_argument("--images", type=int, help="this many images")
    parser.add_argument("--text-tokens", type=int, required=True, help="text tokens in the prompt")
    parser.add_argument(
        "--level",
        default="balanced",
        help="AIM level, gateway grammar: balanced, budget:0.2, merge:0.25,prune:14-22",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def llm_schedule(level: str, spec: ArchSpec, layout: VisualLayout, text_tokens: int) -> AimSchedule:
    """`level` (gateway grammar) resolved for `spec`'s LLM; a budget is solved over the LLM prefill
    alone (`encoder:auto` is refused: this counts no vision encoder)."""

    def solve(budget: float, whole_prefill: bool) -> AimSchedule:
        if whole_prefill:
            raise LevelError(
                "encoder:auto needs the vision encoder's FLOPs; this command counts the LLM only"
            )
        return solve_budget(budget, spec.llm, layout, text_tokens)

    return parse_text(level).resolve(spec.llm.num_layers, solve)


def run(args: argparse.Namespace) -> int:
    spec = ARCHITECTURES[args.arch]
    layout = spec.layout(frames=args.frames or 0, images=args.images or 0)
    schedule = llm_schedule(args.level, spec, layout, args.text_tokens)
    est = estimate_flops(schedule, spec.llm, layout, args.text_tokens)
    result = {
        "arch": args.arch,
        "visual_tokens": est.visual_in,
        "visual_tokens_merged": est.visual_merged,
        "text_tokens": args.text_tokens,
        "merge_ratio": schedule.merge_ratio,
        "prune_layers": list(schedule.prune_layers) if schedule.prune_layers else None,
        "baseline_tflops": est.baseline / 1e12,
        "aim_tflops": est.paper / 1e12,
        "aim_executed_tflops": est.executed / 1e12,
        "ratio": est.ratio,
        "executed_ratio": est.executed_ratio,
    }
    print(json.dumps(result) if args.json else _table(result))
    return 0


def _table(r: dict) -> str:
    prune = "none" if r["prune_layers"] is None else "{},{}".format(*r["prune_layers"])
    return "\n".join(
        [
            f"arch                {r['arch']}",
            f"visual tokens       {r['visual_tokens']} -> {r['visual_tokens_merged']} after merging",
            f"text tokens         {r['text_tokens']}",
            f"schedule            merge ratio {r['merge_ratio']:.4g}, prune layers {prune}",
            f"baseline TFLOPs     {r['baseline_tflops']:.2f}",
            f"AIM TFLOPs          {r['aim_tflops']:.2f}  (paper convention, {1 / r['ratio']:.2f}x fewer)",
            f"AIM executed TFLOPs {r['aim_executed_tflops']:.2f}  ({1 / r['executed_ratio']:.2f}x fewer)",
        ]
    )
