"""Merging inside vLLM's SigLIP / CLIP vision towers (`core.encoder_merge`), chosen per row.

Mirrors vllm==0.32.0 `SiglipVisionTransformer.forward` / `CLIPVisionTransformer.forward` and their
encoder layers' `forward`; from `merge_start_layer` on, the layers run on the merged tokens with
proportional attention, and the tower's output copies each merged token back to its patches
(same shape as the stock tower's). CLIP's CLS token never merges.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from aim_vllm.compat import resolve_visual_encoder_outputs
from aim_vllm.core.encoder_merge import merge_plan, merge_tokens, proportional_attention, unmerge_tokens
from aim_vllm.core.token_counts import kept_token_count, merge_start_layer


def encode_rows(
    tower, pixel_values: torch.Tensor, keeps: Sequence[float], feature_select_strategy
) -> torch.Tensor:
    """Features of each row (frame or crop) of `pixel_values` [R, C, H, W], row i kept at `keeps[i]`.

    Rows of one keep fraction run as one batch; a fraction of 1 runs the stock tower.
    """
    if len(keeps) != pixel_values.shape[0]:
        raise ValueError(f"{len(keeps)} keep fractions for {pixel_values.shape[0]} rows")
    out = None
    for keep, rows in rows_by_keep(keeps, pixel_values.device):
        if keep >= 1.0:
            features = tower(pixel_values[rows], feature_select_strategy=feature_select_strategy)
        else:
            features = _encode_merged(tower.vision_model, pixel_values[rows], keep, feature_select_strategy)
        if out is None:
            out = features.new_empty((len(keeps), *features.shape[1:]))
        out[rows] = features
    assert out is not None
    return out


def rows_by_keep(keeps: Sequence[float], device) -> list[tuple[float, torch.Tensor]]:
    """(keep fraction, indices of the rows with it) for each distinct fraction, in increasing order."""
    return [
        (keep, torch.tensor([i for i, k in enumerate(keeps) if k == keep], device=device))
        for keep in sorted(set(keeps))
    ]


def merge_for_tower(hidden: torch.Tensor, keep: float, protected: int = 0):
    """(merged tokens, their sizes, dest) of the hidden states [B, N, C] entering the start layer."""
    dest = merge_plan(hidden, kept_token_count(hidden.shape[1], keep, protected), protected)
    merged, sizes = merge_tokens(hidden, dest)
    return merged, sizes, dest


def merged_layer(layer, hidden: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """`SiglipEncoderLayer.forward` / `CLIPEncoderLayer.forward` on merged tokens, keys weighted by size."""
    attn = layer.self_attn
    qkv, _ = attn.qkv_proj(layer.layer_norm1(hidden))
    q, k, v = qkv.chunk(3, dim=-1)
    out, _ = attn.out_proj(proportional_attention(q, k, v, sizes, attn.num_heads_per_partition, attn.scale))
    hidden = hidden + out
    return hidden + layer.mlp(layer.layer_norm2(hidden))


def _encode_merged(vision_model, pixel_values: torch.Tensor, keep: float, feature_select_strategy):
    hidden = vision_model.embeddings(pixel_values)
    is_clip = hasattr(vision_model, "pre_layrnorm")
    if is_clip:
        hidden = vision_model.pre_layrnorm(hidden)
    layers = vision_model.encoder.layers
    start = merge_start_layer(len(layers))
    for layer in layers[:start]:
        out = layer(hidden)
        hidden = out[0] if isinstance(out, tuple) else out
    hidden, sizes, dest = merge_for_tower(hidden, keep, protected=1 if is_clip else 0)
    for layer in layers[start:]:
        hidden = merged_layer(layer, hidden, sizes)
    hidden = unmerge_tokens(hidden, dest)
    if is_clip:  # CLIPVisionTransformer: post norm given to the resolver
        return resolve_visual_encoder_outputs(
            hidden, vision_model.post_layernorm, feature_select_strategy=feature_select_strategy
        )
    return resolve_visual_encoder_outputs(  # SigLIP: post norm (and head) in last_hs_proc
        hidden, None, last_hs_proc=vision_model.last_hs_proc, feature_select_strategy=feature_select_strategy
    )
