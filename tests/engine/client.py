"""Chat requests against a test server, and their comparison with the pure-torch reference."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from aim_vllm.core.budget import VisualLayout, solve_budget
from aim_vllm.core.flops import LLMShape
from aim_vllm.core.level import AimLevel
from aim_vllm.core.schedule import AimSchedule
from aim_vllm.reference.pipeline import ReferencePipeline
from tests.engine import media

LOGPROB_TOL = 1e-4
TIE_MARGIN = 1e-4  # below this top-1/top-2 gap, either token is a correct greedy choice


@dataclass
class Media:
    """One request's visual input: its OpenAI content part and what the reference needs."""

    kind: str  # "image" | "video"
    part: dict[str, Any]
    data: Any  # PIL image or decoded frames


def image_item(seed: int, width: int = 400, height: int = 300) -> Media:
    """A deterministic PNG image as a request part (lossless: the reference sees the same pixels)."""
    img = media.image(seed=seed, width=width, height=height)
    return Media("image", {"type": "image_url", "image_url": {"url": media.png_data_url(img)}}, img)


def video_item(seed: int, frames: int) -> Media:
    """A deterministic video as a JPEG frame list, with the frames as vLLM decodes them."""
    url, decoded = media.jpeg_video_data_url(media.video_frames(seed=seed, frames=frames))
    return Media("video", {"type": "video_url", "video_url": {"url": url}}, decoded)


def user_message(media: list[Media], text: str) -> dict:
    return {"role": "user", "content": [*(m.part for m in media), {"type": "text", "text": text}]}


def chat(
    server,
    media: list[Media],
    text: str,
    aim: dict | None = None,
    max_tokens: int = 5,
    timeout: float = 600,
    history: list[dict] = (),
    **extra,
) -> dict:
    """Greedy chat completion with logprobs and token ids; raises on non-200 or after `timeout` s.

    `history`: earlier messages of the conversation, before this user turn.
    """
    body = {
        "model": server.model,
        "messages": [*history, user_message(media, text)],
        "max_tokens": max_tokens,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 1,
        "return_token_ids": True,
        **extra,
    }
    if aim is not None:
        body["mm_processor_kwargs"] = aim
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=timeout)
    response.raise_for_status()
    return response.json()


def aim_kwargs(schedule: AimSchedule) -> dict:
    """The explicit `mm_processor_kwargs` of `schedule` (merge ratio always given)."""
    return AimLevel(schedule=schedule).engine_kwargs()


def assert_matches_reference(
    reference: ReferencePipeline,
    response: dict,
    media: list[Media],
    schedule: AimSchedule,
    tolerance: float = LOGPROB_TOL,
):
    """vLLM's greedy tokens and their logprobs equal the reference's (fp32: 1e-4; ties may differ).

    `tolerance` bounds both the logprob difference and the top-1/top-2 gap under which either
    token counts as greedy (engines computing in bf16 need more than fp32's 1e-4).
    """
    choice = response["choices"][0]
    tokens = choice["token_ids"]
    logprobs = [entry["logprob"] for entry in choice["logprobs"]["content"]]
    items = [
        reference_item(reference, m, schedule.merge_ratio, schedule.merge_method, schedule.encoder_keep)
        for m in media
    ]
    run = reference.run(response["prompt_token_ids"], items, schedule, tokens)
    np.testing.assert_allclose(logprobs, run.logprobs, atol=tolerance, rtol=0)
    tie_margin = max(TIE_MARGIN, tolerance)
    for step, (token, best, margin) in enumerate(zip(tokens, run.argmax, run.margins, strict=True)):
        assert token == best or margin < tie_margin, f"step {step}: vLLM chose {token}, reference {best}"
    return run


def reference_item(
    reference: ReferencePipeline, media: Media, ratio: float, method: str = "aim", encoder_keep: float = 1.0
) -> Any:
    """The reference's item for `media` merged at `ratio` (an embedding, or an architecture's item)."""
    if encoder_keep < 1.0:
        return reference.item(media.kind, media.data, ratio, method, encoder_keep)
    if method == "aim":
        return reference.item(media.kind, media.data, ratio)
    return reference.item(media.kind, media.data, ratio, method)


def assert_budget_resolved(model_dir, usage: dict[str, Any], budget: float, groups: tuple[int, ...]) -> None:
    """The engine resolved `budget` to the schedule the budget solver picks for this model's layers
    and this prompt's merge groups (`groups`: visual tokens of each frame / image, counted by the
    test), within the budget; the request pruned where that schedule prunes."""
    aim = usage["aim"]
    assert sum(groups) == aim["visual_tokens_in"]
    shape = LLMShape.from_hf_config(json.loads((Path(model_dir) / "config.json").read_text()))
    text = usage["prompt_tokens"] - aim["visual_tokens_merged"]
    want = solve_budget(budget, shape, VisualLayout(groups), text)
    assert (aim["merge_ratio"], aim["prune_layers"]) == (
        want.merge_ratio,
        list(want.prune_layers) if want.prune_layers else None,
    )
    assert aim["flops_ratio"] <= budget
    assert aim["pruning"] == ("pruned" if want.prune_layers else "not requested")
