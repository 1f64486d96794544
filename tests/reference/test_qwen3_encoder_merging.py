"""The Qwen3-VL ViT merging reference (`reference.encoder_merging.qwen3_merged_features`): its
written-out forward is transformers' tower, and DeepStack taps read stock states before the merge
start and every patch (merged tokens copied back) after it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aim_vllm.core.token_counts import kept_token_count, merge_start_layer
from aim_vllm.reference.encoder_merging import qwen3_merged_features
from aim_vllm.reference.qwen3_vl import Qwen3VLReference


@pytest.fixture(scope="module")
def reference() -> Qwen3VLReference:
    from aim_vllm.model_builders import default_model_dir

    return Qwen3VLReference(default_model_dir("qwen3-vl"))


def _pixels(reference: Qwen3VLReference, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel values, grid) of a 400x300 image (1 slice of 18 x 24 patches) or 4 frames of 384x384
    (2 slices of 16 x 16)."""
    rng = np.random.default_rng(0)
    if kind == "image":
        image = Image.fromarray((rng.random((300, 400, 3)) * 255).astype("uint8"))
        out = reference.processor.image_processor(images=[image], return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]
    frames = (rng.random((4, 384, 384, 3)) * 255).astype("uint8")
    out = reference.processor.video_processor(videos=[frames], return_tensors="pt", do_sample_frames=False)
    return out["pixel_values_videos"], out["video_grid_thw"]


@pytest.mark.parametrize("kind", ["image", "video"])
def test_keep_one_is_transformers_tower(reference, kind) -> None:
    """Keep 1 (nothing merges, every size 1): the written-out forward (position embeddings, rotary,
    per-slice attention, DeepStack taps) equals transformers' own `Qwen3VLVisionModel.forward`."""
    pixels, grid = _pixels(reference, kind)
    visual = reference.hf.model.visual
    with torch.no_grad():
        stock = visual(pixels, grid_thw=grid, return_dict=True)
    main, levels = qwen3_merged_features(visual, pixels, grid, 1.0)
    torch.testing.assert_close(main, stock.pooler_output, rtol=0, atol=1e-5)
    assert len(levels) == len(stock.deepstack_features) == 3
    for ours, theirs in zip(levels, stock.deepstack_features, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_deepstack_taps_after_the_start_read_every_patch(reference, kind) -> None:
    """The tiny tower (4 blocks, merging from block 1, taps after blocks 0, 1, 2) at keep 0.5: the
    tap before the start reads the stock states (its level equals transformers'); the taps after it
    and the final merger read one row per patch, holding exactly the slices' merged-token count of
    distinct rows (a merger fed merged rows would group 2 x 2 unrelated tokens)."""
    pixels, grid = _pixels(reference, kind)
    visual = reference.hf.model.visual
    t, h, w = grid[0].tolist()
    start = merge_start_layer(len(visual.blocks))
    assert start == 1 and list(visual.deepstack_visual_indexes) == [0, 1, 2]
    inputs: dict[int, torch.Tensor] = {}
    mergers = [*visual.deepstack_merger_list, visual.merger]
    hooks = [
        merger.register_forward_pre_hook(lambda _, args, i=i: inputs.__setitem__(i, args[0].clone()))
        for i, merger in enumerate(mergers)
    ]
    try:
        main, levels = qwen3_merged_features(visual, pixels, grid, 0.5)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        stock = visual(pixels, grid_thw=grid, return_dict=True)
    ours, theirs = [*levels, main], [*stock.deepstack_features, stock.pooler_output]
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-5)
    assert torch.unique(inputs[0].view(t, h * w, -1)[0], dim=0).shape[0] == h * w
    for i in (1, 2, 3):  # taps after blocks 1 and 2, then the final merger
        rows = inputs[i].view(t, h * w, -1)  # every patch, in the tower's order
        for frame in rows:
            assert torch.unique(frame, dim=0).shape[0] == kept_token_count(h * w, 0.5), i
        assert not torch.allclose(ours[i], theirs[i], atol=1e-3), i
