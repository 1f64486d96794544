"""Merging inside vLLM's Qwen2.5-VL vision transformer (`core.window_merge`), chosen per item.

Mirrors vllm==0.32.0 `Qwen2_5_VisionTransformer.forward` and `Qwen2_5_VisionBlock.forward` on the
tower's own modules: blocks before `merge_start_layer` run stock; then every window's tokens
merge (metric: the hidden state entering the start block), the remaining blocks run on the
merged tokens (window or frame segments, rotary position of each merged token's first member,
proportional attention), and the tokens are copied back before the patch merger, so the output
has the stock shape. Under tensor parallelism the blocks' qkv / proj hold this rank's heads and
all-reduce as in the stock forward. `encode_items` and `merged_attention` are shared with
Qwen3-VL's tower (`models.qwen3_encoder_merging`), whose blocks use the same attention module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from aim_vllm.compat import cast_overflow_tensors
from aim_vllm.core.encoder_merge import merge_tokens, unmerge_tokens
from aim_vllm.core.token_counts import merge_start_layer
from aim_vllm.core.window_merge import first_members, regroup, segment_attention, window_merge_plan

MergedEncoder = Callable[[object, torch.Tensor, list[list[int]], float], torch.Tensor]


def encode_items(
    visual,
    pixel_values: torch.Tensor,
    grid_thw: Sequence[Sequence[int]],
    keeps: Sequence[float],
    encode: MergedEncoder | None = None,
) -> list[torch.Tensor]:
    """Each item's embedding [t * h * w / 4, C]; items of one keep fraction run as one batch
    (a fraction of 1 runs the stock tower, others `encode`: this module's `encode_merged` unless
    given)."""
    encode = encode_merged if encode is None else encode
    patches = [int(t) * int(h) * int(w) for t, h, w in grid_thw]
    pixels = pixel_values.split(patches)
    unit = visual.spatial_merge_size**2
    out: list[torch.Tensor | None] = [None] * len(patches)
    for keep in sorted(set(keeps)):
        members = [i for i, k in enumerate(keeps) if k == keep]
        batch, grids = torch.cat([pixels[i] for i in members]), [list(grid_thw[i]) for i in members]
        embeds = visual(batch, grid_thw=grids) if keep >= 1.0 else encode(visual, batch, grids, keep)
        for i, embed in zip(members, embeds.split([patches[i] // unit for i in members]), strict=True):
            out[i] = embed
    return out  # type: ignore[return-value]


def encode_merged(visual, pixel_values: torch.Tensor, grid_thw: list[list[int]], keep: float) -> torch.Tensor:
    """The tower's output [patches / 4, C] for these items, merged inside windows at `keep`."""
    # Adapted from Qwen2_5_VisionTransformer.forward @ vllm==0.32.0
    hidden = visual.patch_embed(visual.input_norm(pixel_values.to(device=visual.device), visual.dtype))
    seq_len, unit = hidden.shape[0], visual.spatial_merge_unit
    meta = visual.prepare_encoder_metadata(grid_thw)
    cos, sin = meta["rotary_pos_emb_cos"], meta["rotary_pos_emb_sin"]
    hidden = hidden.reshape(seq_len // unit, unit, -1)[meta["window_index"]].reshape(seq_len, 1, -1)
    start = merge_start_layer(len(visual.blocks))
    for layer, block in enumerate(visual.blocks[:start]):
        full = layer in visual.fullatt_block_indexes
        hidden = block(
            hidden,
            cu_seqlens=meta["cu_seqlens" if full else "cu_window_seqlens"],
            rotary_pos_emb_cos=cos,
            rotary_pos_emb_sin=sin,
            max_seqlen=meta["max_seqlen_full" if full else "max_seqlen_window"],
            sequence_lengths=meta.get("sequence_lengths_full" if full else "sequence_lengths_window"),
        )
    # AIM: begin -- merge per window, run the rest merged, copy back before the patch merger
    windows, frames = segment_lengths(visual, grid_thw)
    dest, merged_windows = window_merge_plan(hidden[:, 0], windows, keep)
    merged, sizes = merge_tokens(hidden[:, 0][None], dest[None])
    first = first_members(dest, merged.shape[1])
    segments = {"window": merged_windows, "full": regroup(frames, windows, merged_windows)}
    hidden = merged[0][:, None]
    for layer, block in enumerate(visual.blocks[start:], start):
        kind = "full" if layer in visual.fullatt_block_indexes else "window"
        hidden = merged_block(block, hidden, sizes[0], segments[kind], cos[first], sin[first])
    hidden = unmerge_tokens(hidden[:, 0][None], dest[None])[0][:, None]
    # AIM: end
    if hidden.dtype == torch.float16:
        hidden = cast_overflow_tensors(hidden)
    return visual.merger(hidden)[meta["reverse_indices"], :]


def segment_lengths(visual, grid_thw: list[list[int]]) -> tuple[list[int], list[int]]:
    """(window lengths, frame lengths) in tokens, in the tower's window order, over all items."""
    windows: list[int] = []
    frames: list[int] = []
    for t, h, w in grid_thw:
        _, _, _, cu_windows, _ = visual.get_rope_by_thw(t, h, w)  # window ends, in tokens (cached)
        ends = [0, *cu_windows.tolist()]
        windows += [b - a for a, b in zip(ends, ends[1:], strict=False)]
        frames += [h * w] * t
    return windows, frames


def merged_block(
    block,
    hidden: torch.Tensor,
    sizes: torch.Tensor,
    segments: list[int],
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> torch.Tensor:
    """`Qwen2_5_VisionBlock.forward` on merged tokens [M, 1, C] (segments: window or frame lengths)."""
    # Adapted from Qwen2_5_VisionBlock.forward @ vllm==0.32.0
    out = merged_attention(block.attn, block.norm1(hidden), sizes, segments, cos, sin)
    normed, residual = block.norm2(hidden, residual=out)
    return residual + block.mlp(normed)


def merged_attention(
    attn,
    normed: torch.Tensor,
    sizes: torch.Tensor,
    segments: list[int],
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> torch.Tensor:
    """`Qwen2_5_VisionAttention.forward` [M, 1, C] on merged tokens [M, 1, C]: proportional attention
    inside each segment (lengths summing to M), rotary angles `cos` / `sin` of each merged token."""
    # Adapted from Qwen2_5_VisionAttention.forward @ vllm==0.32.0
    heads, head_dim = attn.num_attention_heads_per_partition, attn.hidden_size_per_attention_head
    qkv, _ = attn.qkv(normed)
    q, k, v = qkv.reshape(normed.shape[0], 3, heads, head_dim).unbind(1)  # [M, heads, head_dim]
    q, k = attn.apply_rotary_emb(torch.stack([q, k]).contiguous(), cos, sin).unbind(0)
    context = segment_attention(q, k, v, sizes, segments, head_dim**-0.5)
    out, _ = attn.proj(context.reshape(normed.shape[0], 1, heads * head_dim))
    return out
