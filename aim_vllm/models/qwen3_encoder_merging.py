"""Merging inside vLLM's Qwen3-VL vision transformer (`core.window_merge`), chosen per item.

Mirrors vllm==0.32.0 `Qwen3_VisionTransformer.forward` on the tower's own modules: blocks before
`merge_start_layer(depth)` run stock; then every temporal slice's tokens merge (metric: the hidden
state entering the start block) and the remaining blocks run on the merged tokens.

- Segments: every block attends over one temporal slice (`prepare_encoder_metadata`: one
  `cu_seqlens` entry per frame pair, h * w patches), so a slice is the merge segment: it carries
  `kept_token_count(h * w, keep)` tokens and attention stays per slice. Patches merge one by one,
  as in Qwen2.5-VL's windows (a 2 x 2 spatial-merge group may split; its patches get their own
  merged tokens back before any patch merger).
- A merged token rotates by its first member's (h, w) angles; attention over merged tokens is
  proportional (log size added to each key's scores, ToMe eq. 1): `qwen_encoder_merging`'s
  `merged_attention`, the blocks' attention being vLLM's `Qwen2_5_VisionAttention`.
- DeepStack: the taps (`deepstack_visual_indexes`) before the start block read the stock hidden
  states; the taps at or after it (every tap of the published 8B, 8/16/24 of 27 blocks from block
  6; 11 and 17 of the 2B/4B's 24, tap 5 being the last stock block) read the merged tokens copied
  back to their patches (`encoder_merge.unmerge_tokens`), exactly as the final patch merger does:
  each `deepstack_merger_list` merger concatenates 2 x 2 consecutive patches, so it needs every
  patch. The output rows [t * h * w / 4, D * (1 + L)] have the stock shape and order.

Under tensor parallelism the blocks' qkv / proj and MLP hold this rank's share and all-reduce as
in the stock forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from aim_vllm.core.encoder_merge import merge_tokens, unmerge_tokens
from aim_vllm.core.token_counts import merge_start_layer
from aim_vllm.core.window_merge import first_members, window_merge_plan
from aim_vllm.models import qwen_encoder_merging
from aim_vllm.models.qwen_encoder_merging import merged_attention


def encode_items(
    visual, pixel_values: torch.Tensor, grid_thw: Sequence[Sequence[int]], keeps: Sequence[float]
) -> list[torch.Tensor]:
    """Each item's rows [t * h * w / 4, D * (1 + L)]; items of one keep fraction run as one batch
    (a fraction of 1 runs the stock tower)."""
    return qwen_encoder_merging.encode_items(visual, pixel_values, grid_thw, keeps, encode_merged)


def encode_merged(visual, pixel_values: torch.Tensor, grid_thw: list[list[int]], keep: float) -> torch.Tensor:
    """The tower's rows [patches / 4, D * (1 + L)] for these items, merged per slice at `keep`."""
    # Adapted from Qwen3_VisionTransformer.forward @ vllm==0.32.0
    hidden = visual.patch_embed(visual.input_norm(pixel_values.to(device=visual.device), visual.dtype))
    meta = visual.prepare_encoder_metadata(grid_thw)
    hidden = (hidden + meta["pos_embeds"]).unsqueeze(1)  # [N, 1, C]
    cos, sin = meta["rotary_pos_emb_cos"], meta["rotary_pos_emb_sin"]
    start = merge_start_layer(len(visual.blocks))
    taps: list[torch.Tensor] = []
    for layer, block in enumerate(visual.blocks[:start]):
        hidden = block(
            hidden,
            cu_seqlens=meta["cu_seqlens"],
            rotary_pos_emb_cos=cos,
            rotary_pos_emb_sin=sin,
            max_seqlen=meta["max_seqlen"],
            sequence_lengths=meta.get("sequence_lengths"),
        )
        taps += deepstack_taps(visual, layer, hidden)
    # AIM: begin -- merge per slice, run the rest merged, copy back before every patch merger
    slices = [int(h) * int(w) for t, h, w in grid_thw for _ in range(int(t))]
    dest, merged_slices = window_merge_plan(hidden[:, 0], slices, keep)
    merged, sizes = merge_tokens(hidden[:, 0][None], dest[None])
    first = first_members(dest, merged.shape[1])
    hidden = merged[0][:, None]  # [M, 1, C]
    for layer, block in enumerate(visual.blocks[start:], start):
        hidden = merged_block(block, hidden, sizes[0], merged_slices, cos[first], sin[first])
        if layer in visual.deepstack_visual_indexes:
            taps += deepstack_taps(visual, layer, copied_back(hidden, dest))
    hidden = copied_back(hidden, dest)
    # AIM: end
    return torch.cat([visual.merger(hidden), *taps], dim=1)


def copied_back(hidden: torch.Tensor, dest: torch.Tensor) -> torch.Tensor:
    """Every patch [N, 1, C] with the merged token [M, 1, C] it joined (`dest` [N])."""
    return unmerge_tokens(hidden[:, 0][None], dest[None])[0][:, None]


def deepstack_taps(visual, layer: int, hidden: torch.Tensor) -> list[torch.Tensor]:
    """[that tap's rows [N / 4, D]] when block `layer` is a DeepStack tap of the tower, else []."""
    if layer not in visual.deepstack_visual_indexes:
        return []
    return [visual.deepstack_merger_list[visual.deepstack_visual_indexes.index(layer)](hidden)]


def merged_block(
    block,
    hidden: torch.Tensor,
    sizes: torch.Tensor,
    segments: list[int],
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> torch.Tensor:
    """`Qwen3_VisionBlock.forward` on merged tokens [M, 1, C] (segments: merged slice lengths)."""
    # Adapted from Qwen3_VisionBlock.forward @ vllm==0.32.0
    hidden = hidden + merged_attention(block.attn, block.norm1(hidden), sizes, segments, cos, sin)
    return hidden + block.mlp(block.norm2(hidden))
