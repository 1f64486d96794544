"""The gateway in front of the real AIM engine, driven by the unchanged OpenAI Python SDK.

One gateway (uvicorn in a thread, on a free port) over the session's `aim_engine`. The requests
are sent once, concurrently (module fixture `answers`): the same video at every preset through
`extra_body={"aim": ...}` (non-streaming), the same image at every preset through the
`X-AIM-Level` header (streaming with `include_usage`), a FLOPs budget and an explicit level.
The tests then check each answer's `usage.aim` against the prompt lengths and the pure core
functions (`aim_vllm.core`), and the gateway's metrics against the answers.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aim_vllm.core.budget import VisualLayout, solve_budget
from aim_vllm.core.flops import LLMShape, executed_prefill_flops, prefill_flops
from aim_vllm.core.schedule import PRESETS, AimSchedule, preset_schedule
from aim_vllm.core.token_counts import visual_kept_after_layer
from tests.engine import media

QUESTION = "What colour is the square?"
MAX_TOKENS = 2
BUDGET = 0.3
EXPLICIT = "merge:0.5,prune:2-5"
VIDEO_FRAMES = 8
VIDEO_EXTRA_TOKENS = 1  # LLaVA-OneVision appends one newline token to a video
FLOPS_REL_TOL = 1e-9


@dataclass(frozen=True)
class Ask:
    """One SDK request: which media, how the level is given, and whether it streams."""

    kind: str  # "image" | "video"
    level: str | dict[str, Any]
    via_header: bool
    stream: bool


ASKS: dict[str, Ask] = {
    **{f"video-{p}": Ask("video", p, via_header=False, stream=False) for p in PRESETS},
    **{f"image-{p}": Ask("image", p, via_header=True, stream=True) for p in PRESETS},
    "video-budget": Ask("video", {"budget": BUDGET}, via_header=False, stream=False),
    "video-explicit": Ask("video", EXPLICIT, via_header=True, stream=True),
}
LEVELS = {**{name: ask.level for name, ask in ASKS.items()}, "video-budget": f"budget:{BUDGET}"}


@dataclass
class Answer:
    usage: dict[str, Any]  # usage with its `aim` object, as the SDK parsed it
    content: str
    chunks: int = 0  # streaming: chunks received, the usage chunk last


@pytest.fixture(scope="module")
def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def parts() -> dict[str, dict[str, Any]]:
    video_url, _ = media.jpeg_video_data_url(media.video_frames(seed=1, frames=VIDEO_FRAMES))
    return {
        "image": {"type": "image_url", "image_url": {"url": media.png_data_url(media.image(seed=0))}},
        "video": {"type": "video_url", "video_url": {"url": video_url}},
    }


def _ask(sdk: openai.OpenAI, model: str, part: dict[str, Any], ask: Ask) -> Answer:
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    if ask.via_header:
        kwargs["extra_headers"] = {"X-AIM-Level": ask.level}
    else:
        kwargs["extra_body"] = {"aim": ask.level}
    if not ask.stream:
        completion = sdk.chat.completions.create(**kwargs)
        return Answer(completion.usage.to_dict(), completion.choices[0].message.content or "")
    stream = sdk.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    with_usage = [i for i, chunk in enumerate(chunks) if chunk.usage is not None]
    assert with_usage == [len(chunks) - 1], "exactly one usage chunk, the last"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return Answer(chunks[-1].usage.to_dict(), content, len(chunks))


def _metric_samples(gateway: str) -> dict[str, float]:
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in pairs}


@pytest.fixture(scope="module")
def metrics_before(gateway) -> dict[str, float]:
    """The gateway's metrics before this module's requests (the gateway is shared by the session)."""
    return _metric_samples(gateway)


@pytest.fixture(scope="module")
def answers(sdk, aim_engine, parts, metrics_before) -> dict[str, Answer]:
    """Every request of ASKS, sent at once (the engine batches them)."""
    with ThreadPoolExecutor(len(ASKS)) as pool:
        futures = {
            name: pool.submit(_ask, sdk, aim_engine.model, parts[ask.kind], ask) for name, ask in ASKS.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def shape(aim_engine) -> LLMShape:
    config = json.loads((Path(aim_engine.model) / "config.json").read_text())
    return LLMShape.from_hf_config(config)


def _schedule(aim: dict[str, Any]) -> AimSchedule:
    prune = aim["prune_layers"]
    return AimSchedule(aim["merge_ratio"], tuple(prune) if prune else None)


def test_sdk_answers_every_level_with_usage_aim_and_the_gateways_label(answers, sdk, aim_engine) -> None:
    """Both SDK paths work unchanged, and every answer's usage.aim names the level the gateway applied."""
    engine_models = httpx.get(f"{aim_engine.url}/v1/models", timeout=10).json()["data"]
    assert [model.id for model in sdk.models.list().data] == [model["id"] for model in engine_models]
    for name, answer in answers.items():
        usage = answer.usage
        assert 1 <= usage["completion_tokens"] <= MAX_TOKENS, name
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], name
        assert answer.usage["aim"]["level"] == LEVELS[name], name
        assert isinstance(answer.content, str)
        assert answer.chunks >= (3 if ASKS[name].stream else 0), name  # role, token(s), usage


@pytest.mark.parametrize("kind", ["video", "image"])
def test_presets_apply_the_core_schedule(answers, shape, kind) -> None:
    """The engine resolves each preset to `core.schedule.preset_schedule` for the model's depth,
    and says whether it pruned."""
    for preset in PRESETS:
        aim = answers[f"{kind}-{preset}"].usage["aim"]
        expected = preset_schedule(preset, shape.num_layers)
        assert _schedule(aim) == expected, preset
        assert aim["pruning"] == ("pruned" if expected.prunes else "not requested"), preset


@pytest.mark.parametrize("kind", ["video", "image"])
def test_merged_tokens_are_the_prompt_placeholders(answers, kind) -> None:
    """usage.prompt_tokens minus the AIM-off request's text tokens is exactly visual_tokens_merged:
    the merged count is what the prompt really held, at every level."""
    off = answers[f"{kind}-off"].usage
    text = off["prompt_tokens"] - off["aim"]["visual_tokens_in"]
    assert off["aim"]["visual_tokens_merged"] == off["aim"]["visual_tokens_in"]
    for name in (n for n, ask in ASKS.items() if ask.kind == kind):
        usage = answers[name].usage
        aim = usage["aim"]
        assert aim["text_tokens"] == text, name
        assert aim["visual_tokens_in"] == off["aim"]["visual_tokens_in"], name
        assert aim["visual_tokens_merged"] == usage["prompt_tokens"] - text, name
        assert (aim["visual_tokens_merged"] < aim["visual_tokens_in"]) == (aim["merge_ratio"] < 1), name


def test_rows_and_flops_follow_the_core_functions(answers, shape) -> None:
    """rows_per_layer = text + visual entering each layer (`visual_kept_after_layer`), the kept
    summary lists the pruned layers, and the FLOPs are `core.flops` of those counts."""
    for name, answer in answers.items():
        aim = answer.usage["aim"]
        text, merged = aim["text_tokens"], aim["visual_tokens_merged"]
        prune = _schedule(aim).prune_layers
        kept = visual_kept_after_layer(merged, shape.num_layers, prune)
        entering = [merged, *kept[:-1]]
        assert aim["rows_per_layer"] == [text + v for v in entering], name
        assert aim["visual_tokens_kept"] == {
            str(layer): k for layer, (k, e) in enumerate(zip(kept, entering, strict=True)) if k < e
        }, name
        off = prefill_flops([text + aim["visual_tokens_in"]] * shape.num_layers, shape)
        executed = executed_prefill_flops(text + merged, [text + k for k in kept], shape)
        assert aim["llm_prefill_flops_off"] == pytest.approx(off, rel=FLOPS_REL_TOL), name
        assert aim["llm_prefill_flops"] == pytest.approx(executed, rel=FLOPS_REL_TOL), name
        assert aim["flops_ratio"] == pytest.approx(executed / off, rel=FLOPS_REL_TOL), name


def test_budget_and_explicit_levels(answers, shape) -> None:
    """A budget is solved by `core.budget.solve_budget` on the request's own layout and stays under
    it; an explicit level reaches the engine as given."""
    aim = answers["video-budget"].usage["aim"]
    frame_tokens, rest = divmod(aim["visual_tokens_in"] - VIDEO_EXTRA_TOKENS, VIDEO_FRAMES)
    assert rest == 0
    layout = VisualLayout((frame_tokens,) * VIDEO_FRAMES, VIDEO_EXTRA_TOKENS)
    assert _schedule(aim) == solve_budget(BUDGET, shape, layout, aim["text_tokens"])
    assert 0 < aim["flops_ratio"] <= BUDGET
    explicit = answers["video-explicit"].usage["aim"]
    assert _schedule(explicit) == AimSchedule(0.5, (2, 5))
    assert explicit["pruning"] == "pruned"


def test_gateway_passes_the_engines_usage_aim_unchanged(answers, aim_engine, parts) -> None:
    """Apart from `level`, usage.aim is the engine's own object: the same request sent to vLLM
    directly reports the same counters."""
    body = {
        "model": aim_engine.model,
        "messages": [{"role": "user", "content": [parts["video"], {"type": "text", "text": QUESTION}]}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "mm_processor_kwargs": {"aim_preset": "balanced"},
    }
    direct = httpx.post(f"{aim_engine.url}/v1/chat/completions", json=body, timeout=300)
    assert direct.status_code == 200, direct.text
    through = dict(answers["video-balanced"].usage)
    assert through.pop("aim") == {**direct.json()["usage"]["aim"], "level": "balanced"}
    assert through["prompt_tokens"] == direct.json()["usage"]["prompt_tokens"]


def test_metrics_aggregate_usage_aim_by_level(answers, gateway, metrics_before) -> None:
    """The gateway's Prometheus counters grow by the sums of the answers' usage.aim, per level label."""
    now = _metric_samples(gateway)

    def grew(name: str) -> float:
        return now.get(name, 0.0) - metrics_before.get(name, 0.0)

    for label in PRESETS:
        group = [a.usage["aim"] for n, a in answers.items() if n.endswith(f"-{label}")]
        for field in ("visual_tokens_in", "visual_tokens_merged"):
            total = grew(f'aim_gateway_{field}_total{{level="{label}"}}')
            assert total == sum(a[field] for a in group), (label, field)
        assert grew(f'aim_gateway_flops_ratio_count{{level="{label}"}}') == len(group)
    assert grew('aim_gateway_flops_ratio_count{level="budget"}') == 1
    assert grew('aim_gateway_flops_ratio_count{level="custom"}') == 1
    assert grew('aim_gateway_ttft_seconds_count{level="off"}') == 1  # one streaming "off"


def test_a_level_the_engine_refuses_is_a_clear_400(sdk, aim_engine, parts) -> None:
    """The gateway cannot know the model's depth; the engine's 400 reaches the SDK as BadRequestError."""
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model=aim_engine.model,
            messages=[{"role": "user", "content": [parts["image"], {"type": "text", "text": QUESTION}]}],
            max_tokens=1,
            extra_headers={"X-AIM-Level": "prune:2-99"},
        )
    assert "prune" in info.value.message


def test_frames_sent_as_images_reach_the_engine_as_one_video(gateway, aim_engine, reference) -> None:
    """lmms-eval sends a video's frames as PNG image parts; with `aim_frames_as_video` the engine
    sees one video (196 tokens per frame, AIM's per-frame merging) and answers as the reference
    does for that video, instead of tiling each frame as an image."""
    from PIL import Image

    from aim_vllm.core.level import AimLevel
    from tests.engine.client import Media, assert_matches_reference

    frames = media.video_frames(seed=41, frames=4)
    parts = [
        {"type": "image_url", "image_url": {"url": media.png_data_url(Image.fromarray(f))}} for f in frames
    ]
    schedule = AimSchedule(0.25, (1, 4))
    body = {
        "model": aim_engine.model,
        "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": QUESTION}]}],
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 1,
        "return_token_ids": True,
        "aim": AimLevel(schedule=schedule).text,
        "aim_frames_as_video": True,
    }
    response = httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=600)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["usage"]["aim"]["visual_tokens_in"] == 4 * 196 + VIDEO_EXTRA_TOKENS
    assert answer["usage"]["aim"]["visual_tokens_merged"] == 4 * 49 + VIDEO_EXTRA_TOKENS
    assert_matches_reference(reference, answer, [Media("video", parts[0], frames)], schedule)
