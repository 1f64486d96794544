"""Reference for merging inside the vision encoder (`core.encoder_merge`), independent of vLLM.

SigLIP / CLIP: transformers' own layers run on the merged tokens, with the log-size bias given as
their additive attention mask (transformers' attention, not `proportional_attention`).
`merged_tower` stands in for the model's vision tower while transformers' `get_image_features` /
`get_video_features` run, so its projector, pooling and anyres packing are the stock ones.
Qwen2.5-VL (`qwen_merged_features`): transformers' ViT forward written out with its own modules,
merging per window (`core.window_merge`). Qwen3-VL (`qwen3_merged_features`): the same, merging
per temporal slice, its DeepStack taps after the start block reading the tokens copied back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from torch import nn

from aim_vllm.core.encoder_merge import merge_plan, merge_tokens, size_bias, unmerge_tokens
from aim_vllm.core.token_counts import kept_token_count, merge_start_layer
from aim_vllm.core.window_merge import first_members, regroup, window_merge_plan


class _MergedTower(nn.Module):
    """A transformers SigLIP vision model whose `hidden_states[feature_layer]` is the merged run's."""

    def __init__(self, tower: nn.Module, keep: float, feature_layer: int) -> None:
        super().__init__()
        self.tower, self.keep, self.feature_layer = tower, keep, feature_layer

    def forward(self, pixel_values: torch.Tensor, **_: object) -> SimpleNamespace:
        vision = getattr(self.tower, "vision_model", self.tower)  # transformers may give either
        total = len(vision.encoder.layers)
        depth = self.feature_layer % (total + 1)  # layers whose output the model selects
        layers = vision.encoder.layers[:depth]
        hidden = vision.embeddings(pixel_values)
        start = merge_start_layer(depth)
        for layer in layers[:start]:
            hidden = layer(hidden, None)
        dest = merge_plan(hidden, kept_token_count(hidden.shape[1], self.keep))
        hidden, sizes = merge_tokens(hidden, dest)
        for layer in layers[start:]:
            hidden = layer(hidden, size_bias(sizes, hidden.dtype))
        states: list[torch.Tensor | None] = [None] * (total + 1)
        states[depth] = unmerge_tokens(hidden, dest)
        return SimpleNamespace(hidden_states=states)


@contextmanager
def merged_tower(model: nn.Module, keep: float) -> Iterator[None]:
    """Within the block, `model.vision_tower` (a transformers LLaVA model) merges at `keep`."""
    if keep >= 1.0:
        yield
        return
    tower = model.vision_tower
    feature_layer = model.config.vision_feature_layer
    if not isinstance(feature_layer, int):
        raise ValueError("encoder merging needs a single vision feature layer")
    model.vision_tower = _MergedTower(tower, keep, feature_layer)
    try:
        yield
    finally:
        model.vision_tower = tower


@torch.no_grad()
def qwen_merged_features(visual: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor, keep: float):
    """Features [tokens, C] of transformers' Qwen2.5-VL ViT with its blocks from `merge_start_layer`
    on run on window-merged tokens (`core.window_merge`), copied back before the patch merger.

    Follows `Qwen2_5_VisionTransformerPretrainedModel.forward` (transformers 5.x) with its own
    helpers, blocks and merger; attention over merged tokens is written out per segment
    (softmax of scores + log sizes), not `core.window_merge.segment_attention`.
    """
    from transformers.vision_utils import (
        get_vision_attention_seqlens,
        get_vision_position_ids,
        get_vision_window_index,
    )

    positions = get_vision_position_ids(grid_thw, visual.spatial_merge_size, kwargs={})
    cu_frames, _ = get_vision_attention_seqlens(grid_thw, visual.config, kwargs={})
    window_index, cu_windows = get_vision_window_index(
        grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
        patch_size=visual.patch_size, kwargs={},
    )  # fmt: skip
    hidden = visual.patch_embed(pixel_values.to(visual.dtype))
    seq_len = hidden.shape[0]
    hidden = visual.permute_input_for_window_attn(hidden, window_index, seq_len=seq_len)
    cos, sin = (
        visual.permute_input_for_window_attn(f, window_index, seq_len=seq_len)
        for f in visual.rotary_pos_emb(hidden, positions)
    )
    start = merge_start_layer(len(visual.blocks))
    for i, block in enumerate(visual.blocks[:start]):
        cu = cu_frames if i in visual.fullatt_block_indexes else cu_windows
        hidden = block(hidden, cu_seqlens=cu, position_embeddings=(cos, sin))
    windows = [int(n) for n in torch.diff(cu_windows) if n > 0]
    dest, merged_windows = window_merge_plan(hidden, windows, keep)
    merged, sizes = merge_tokens(hidden[None], dest[None])
    first = first_members(dest, merged.shape[1])
    frames = regroup(torch.diff(cu_frames).tolist(), windows, merged_windows)
    hidden = merged[0]
    for i, block in enumerate(visual.blocks[start:], start):
        segments = frames if i in visual.fullatt_block_indexes else merged_windows
        hidden = _qwen_merged_block(block, hidden, sizes[0], segments, cos[first], sin[first])
    hidden = unmerge_tokens(hidden[None], dest[None])[0]
    return visual.merger(hidden)[torch.argsort(window_index)]


@torch.no_grad()
def qwen3_merged_features(
    visual: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor, keep: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(main features [tokens, D], each DeepStack level's [tokens, D]) of transformers' Qwen3-VL ViT
    with its blocks from `merge_start_layer` on run on tokens merged per temporal slice
    (`core.window_merge` with one segment per `cu_seqlens` entry).

    Follows `Qwen3VLVisionModel.forward` (transformers 5.x) with its own helpers, blocks and
    mergers. A DeepStack tap at a block from the start on, and the final merger, read every patch
    its merged token's value (`unmerge_tokens`); taps before the start read the stock states.
    """
    from transformers.vision_utils import (
        get_vision_attention_seqlens,
        get_vision_interpolation_indices_and_weights,
        get_vision_position_ids,
    )

    indices, weights = get_vision_interpolation_indices_and_weights(
        grid_thw, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
        align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.spatial_merge_size,
        kwargs={},
    )  # fmt: skip
    positions = get_vision_position_ids(grid_thw, visual.spatial_merge_size, kwargs={})
    cu_slices, _ = get_vision_attention_seqlens(grid_thw, visual.config, kwargs={})
    hidden = visual.patch_embed(pixel_values.to(visual.dtype))
    hidden = hidden + (visual.pos_embed(indices) * weights[:, :, None]).sum(1).to(hidden.dtype)
    cos, sin = visual.rotary_pos_emb(hidden, positions)
    start = merge_start_layer(len(visual.blocks))
    levels: list[torch.Tensor] = []
    for i, block in enumerate(visual.blocks[:start]):
        hidden = block(hidden, cu_seqlens=cu_slices, position_embeddings=(cos, sin))
        if i in visual.deepstack_visual_indexes:
            levels.append(visual.deepstack_merger_list[visual.deepstack_visual_indexes.index(i)](hidden))
    slices = torch.diff(cu_slices).tolist()
    dest, merged_slices = window_merge_plan(hidden, slices, keep)
    merged, sizes = merge_tokens(hidden[None], dest[None])
    first = first_members(dest, merged.shape[1])
    hidden = merged[0]
    for i, block in enumerate(visual.blocks[start:], start):
        hidden = _qwen_merged_block(block, hidden, sizes[0], merged_slices, cos[first], sin[first])
        if i in visual.deepstack_visual_indexes:
            copied = unmerge_tokens(hidden[None], dest[None])[0]
            levels.append(visual.deepstack_merger_list[visual.deepstack_visual_indexes.index(i)](copied))
    return visual.merger(unmerge_tokens(hidden[None], dest[None])[0]), levels


def _qwen_merged_block(block, x, sizes, segments, cos, sin) -> torch.Tensor:
    """transformers' `Qwen2_5_VLVisionBlock` (or `Qwen3VLVisionBlock`, the same residual layout and
    rotary) on merged tokens [M, C], proportional attention per segment."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    attn, n = block.attn, x.shape[0]
    q, k, v = attn.qkv(block.norm1(x)).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    outs, begin = [], 0
    for length in segments:
        part = slice(begin, begin + length)
        begin += length
        scores = torch.einsum("qhd,khd->hqk", q[part], k[part]) * attn.scaling + sizes[part].log()
        outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[part]))
    x = x + attn.proj(torch.cat(outs).reshape(n, -1))
    return x + block.mlp(block.norm2(x))
