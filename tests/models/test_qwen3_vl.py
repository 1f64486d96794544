"""Qwen3-VL merging glue: per-slice placeholder runs, M-RoPE of merged prompts (when a request is
added, and after the encoder), and DeepStack rows merged with their main rows' plan.

The engine fixes positions from placeholder ranges and grids (`get_mrope_input_positions`), then
rewrites them from the survivors the encoder reports (`recompute_mrope_positions`); the reference
(`reference.qwen3_vl.mrope_positions`) writes them out independently. Multi-item prompts with a
video (one run per slice, timestamp text between), merged and unmerged items, must agree exactly.
"""

from __future__ import annotations

import pytest
import torch

from aim_vllm.core import position_channels
from aim_vllm.core.item_params import ItemParams, field_name
from aim_vllm.core.merge import merge_frames_with_origin
from aim_vllm.core.schedule import AimSchedule
from aim_vllm.core.token_counts import merged_token_count
from aim_vllm.models.qwen3_vl import (
    AimQwen3VLForConditionalGeneration,
    merge_item,
    shorten_runs,
    slice_channels,
)
from aim_vllm.reference.qwen3_vl import Qwen3Item, mrope_positions

IMAGE_ID, VIDEO_ID, START, END, MERGE = 7, 8, 5, 6, 2
TEXT, STAMP = 1, 2  # any text token; a timestamp's text token (`<t seconds>`)
WIDTH = 4  # the tower rows' channels in these tests (no real model)


@pytest.fixture(scope="module")
def model():
    """The AIM model class with only its config (the position code reads nothing else)."""
    from transformers import Qwen3VLConfig

    config = Qwen3VLConfig(
        vision_config={"spatial_merge_size": MERGE},
        image_token_id=IMAGE_ID,
        video_token_id=VIDEO_ID,
        vision_start_token_id=START,
        vision_end_token_id=END,
    )
    instance = object.__new__(AimQwen3VLForConditionalGeneration)
    object.__setattr__(instance, "config", config)
    object.__setattr__(instance, "visual_dim", WIDTH)
    object.__setattr__(instance, "deepstack_num_level", 0)
    object.__setattr__(instance, "is_multimodal_pruning_enabled", False)
    return instance


def _elem(data: torch.Tensor):
    from vllm.multimodal.inputs import MultiModalBatchedField, MultiModalFieldElem

    return MultiModalFieldElem(data=data, field=MultiModalBatchedField())


def _feature(modality: str, grid: tuple[int, int, int], ratio: float | None, offset: int, length: int):
    from vllm.multimodal.inputs import MultiModalFeatureSpec, MultiModalKwargsItem, PlaceholderRange

    data = {f"{modality}_grid_thw": _elem(torch.tensor(grid))}
    if ratio is not None:
        t, h, w = grid
        data[field_name(modality)] = _elem(ItemParams(AimSchedule(ratio), t * h * w // 4).to_tensor())
    return MultiModalFeatureSpec(
        data=MultiModalKwargsItem(data),
        modality=modality,
        identifier=f"{modality}-{offset}",
        mm_position=PlaceholderRange(offset=offset, length=length),
    )


def _prompt(items: list[tuple[str, tuple[int, int, int], float | None]]):
    """A prompt of text, then each item (an image run; a video: per slice timestamp, start, run,
    end), then text: its ids, features, and the reference's items (count-based positions)."""
    ids, features, refs = [TEXT] * 3, [], []
    for modality, grid, ratio in items:
        t, h, w = grid
        n = (h // MERGE) * (w // MERGE)
        k = n if ratio is None else merged_token_count(n, ratio)
        offset = len(ids)
        if modality == "image":
            ids += [IMAGE_ID] * k
        else:
            for _ in range(t):
                ids += [STAMP] * 3 + [START] + [VIDEO_ID] * k + [END]
        features.append(_feature(modality, grid, ratio, offset, len(ids) - offset))
        refs.append(Qwen3Item(torch.zeros(t * k, WIDTH), grid, k))
        ids += [TEXT] * 2
    return ids + [TEXT] * 4, features, refs


PROMPTS = {
    "image": [("image", (1, 6, 8), 0.25)],
    "video": [("video", (3, 4, 6), 0.5)],
    "mixed": [("image", (1, 8, 4), 0.3), ("video", (2, 6, 6), None), ("video", (2, 4, 4), 0.25)],
    "off": [("image", (1, 6, 8), None), ("video", (2, 4, 6), None)],
}


@pytest.mark.parametrize("name", PROMPTS)
def test_positions_when_added_follow_the_reference(model, name) -> None:
    """Count-based positions of a merged prompt == the reference rule; unmerged == stock vLLM."""
    ids, features, refs = _prompt(PROMPTS[name])
    positions, delta = model.get_mrope_input_positions(ids, features)
    want, want_delta = mrope_positions(ids, refs, (IMAGE_ID, VIDEO_ID), MERGE)
    torch.testing.assert_close(positions, want, rtol=0, atol=0)
    assert delta == want_delta


def test_reference_rule_is_stock_vllm_without_merging(model) -> None:
    """The reference's rule (slice at the next text position, text after the unmerged grid) is
    vLLM's own for a video with timestamps, checked on stock positions of an unmerged prompt."""
    ids, features, refs = _prompt([("video", (3, 4, 6), None), ("image", (1, 6, 4), None)])
    stock, _ = super(AimQwen3VLForConditionalGeneration, model).get_mrope_input_positions(ids, features)
    torch.testing.assert_close(mrope_positions(ids, refs, (IMAGE_ID, VIDEO_ID), MERGE)[0], stock)


def test_positions_after_the_encoder_are_the_survivors(model) -> None:
    """`recompute_mrope_positions` puts each merged token at its survivor (per slice of a video,
    whose runs are split by timestamp text), strips the channels, and leaves text and unmerged
    items alone; in one step or in chunks."""
    ids, features, refs = _prompt(PROMPTS["mixed"])
    added, _ = model.get_mrope_input_positions(ids, features)
    torch.manual_seed(0)
    embeddings = []
    for ref in refs:
        t, h, w = ref.grid_thw
        n, k = (h // MERGE) * (w // MERGE), ref.merged_per_slice
        rows = torch.randn(t * k, WIDTH)
        if k < n:
            ref.origin = torch.stack([torch.randperm(n)[:k].sort().values for _ in range(t)])
            rows = position_channels.attach(rows, slice_channels(ref.origin, w // MERGE))
        embeddings.append(rows)
    want, want_delta = mrope_positions(ids, refs, (IMAGE_ID, VIDEO_ID), MERGE)
    stripped, positions, delta = model.recompute_mrope_positions(ids, embeddings, added, 0)
    torch.testing.assert_close(positions, want, rtol=0, atol=0)
    assert delta == want_delta and all(s.shape[1] == WIDTH for s in stripped)
    # in two chunks: the first items, then the last one as a later chunk sees it
    _, positions, _ = model.recompute_mrope_positions(ids, embeddings[:-1], added, 0)
    video_start = features[-1].mm_position.offset
    _, positions, _ = model.recompute_mrope_positions(ids, embeddings[-1:], positions, video_start)
    torch.testing.assert_close(positions, want, rtol=0, atol=0)


def test_deepstack_rows_take_their_main_rows_plan() -> None:
    """The plan is the main channels' alone (survivors as if merging the main features), and each
    DeepStack level is averaged over the same tokens with the same weights: a level that copies
    the main features merges to a copy of the merged main features."""
    torch.manual_seed(0)
    t, n, main = 2, 48, 8
    feats = torch.randn(t * n, main)
    levels = torch.cat([feats, feats, torch.randn(t * n, main)], dim=1)  # level 1 == main, level 2 noise
    rows, origin = merge_item(levels, t, 0.25, main)
    alone, alone_origin = merge_frames_with_origin(feats.view(t, n, main), merged_token_count(n, 0.25))
    torch.testing.assert_close(origin, alone_origin, rtol=0, atol=0)
    torch.testing.assert_close(rows[:, :main], alone.flatten(0, 1))
    torch.testing.assert_close(rows[:, main : 2 * main], rows[:, :main])
    assert rows.shape == (t * merged_token_count(n, 0.25), 3 * main)


def test_shorten_runs_keeps_text_between_runs() -> None:
    """Each run of the placeholder is cut to k; timestamp text and start/end tokens stay."""
    full = [STAMP, START, *[VIDEO_ID] * 5, END, STAMP, STAMP, START, *[VIDEO_ID] * 5, END]
    want = [STAMP, START, *[VIDEO_ID] * 2, END, STAMP, STAMP, START, *[VIDEO_ID] * 2, END]
    assert shorten_runs(full, VIDEO_ID, 2) == want
    assert shorten_runs(full, VIDEO_ID, 5) == full
