"""The schedule a Qwen3-VL engine should resolve `aim_budget` to: the budget solver's for the
prompt's layout (one group per temporal slice; a video's timestamp text, counted by usage with
the item, is text the LLM never prunes), merging alone where its window starts before L."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aim_vllm.core.budget import VisualLayout, solve_budget
from aim_vllm.core.flops import LLMShape
from aim_vllm.core.schedule import AimSchedule
from tests.engine.qwen3.checkpoints import DEEPSTACK_LEVELS, IMAGE_TOKENS, SLICE_TOKENS, VIDEO_SLICES

GROUPS = {"image": (IMAGE_TOKENS,), "video": (SLICE_TOKENS,) * VIDEO_SLICES}


def llm_shape(model_dir: Path) -> LLMShape:
    """The FLOPs shape of `model_dir`'s LLM (`LLMShape.from_hf_config` on its config.json)."""
    return LLMShape.from_hf_config(json.loads((Path(model_dir) / "config.json").read_text()))


def solved_schedule(model_dir: Path, usage: dict[str, Any], budget: float, kind: str) -> AimSchedule:
    """The solver's schedule for this response's prompt (`usage`) of one `kind` item at `budget`."""
    aim = usage["aim"]
    groups = GROUPS[kind]
    stamps = aim["visual_tokens_in"] - sum(groups)  # a video's timestamp text: never pruned
    text = usage["prompt_tokens"] - aim["visual_tokens_merged"] + stamps
    shape, layout = llm_shape(model_dir), VisualLayout(groups)
    want = solve_budget(budget, shape, layout, text)
    if want.prunes and want.prune_layers[0] < DEEPSTACK_LEVELS:
        want = solve_budget(budget, shape, layout, text, prune=False)
    return want


def assert_resolved(usage: dict[str, Any], want: AimSchedule, budget: float) -> None:
    """The response ran `want` (merge ratio and prune window) and stayed within `budget`."""
    aim = usage["aim"]
    layers = None if want.prune_layers is None else list(want.prune_layers)
    assert (aim["merge_ratio"], aim["prune_layers"]) == (want.merge_ratio, layers), aim
    assert aim["flops_ratio"] <= budget, aim
