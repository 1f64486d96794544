"""Token counts of AIM, known before any tensor exists (plain Python, no torch).

These are the counts the prompt placeholders, the merge and the pruning must all agree on:
the merge of a frame produces exactly `merged_token_count` tokens, and pruning after layer l
keeps exactly `visual_kept_after_layer(...)[l]` visual tokens (AIM §3.1-3.2).
"""

from __future__ import annotations

import math


def merged_token_count(num_tokens: int, ratio: float) -> int:
    """Tokens a frame of `num_tokens` keeps at merge `ratio` (kept fraction, in (0, 1]).

    Rounds to nearest (half up) and keeps at least one token; 196 at 0.25 -> 49.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"merge ratio must be in (0, 1], got {ratio}")
    return max(1, min(num_tokens, math.floor(num_tokens * ratio + 0.5)))


def merge_passes(num_tokens: int, target: int) -> list[int]:
    """Tokens removed by each bipartite pass (r per pass) to go from `num_tokens` to `target`.

    A pass removes at most half the tokens (r <= T // 2): 196 -> 49 is [98, 49].
    """
    if not 1 <= target <= num_tokens:
        raise ValueError(f"target must be in [1, {num_tokens}], got {target}")
    passes, t = [], num_tokens
    while t > target:
        r = min(t // 2, t - target)
        passes.append(r)
        t -= r
    return passes


def retention_at_layer(layer: int, l1: int, l2: int) -> float:
    """Keep ratio r_l applied to the output of `layer`: clip((l2 - 1 - l) / (l2 - l1), 0, 1).

    With the paper's (14, 22): 1.0 up to layer 13, 0.875 at 14, ..., 0.0 at 21.
    """
    return min(1.0, max(0.0, (l2 - 1 - layer) / (l2 - l1)))


def visual_kept_after_layer(
    num_visual: int, num_layers: int, prune_layers: tuple[int, int] | None, keep: float | None = None
) -> list[int]:
    """Visual tokens leaving each layer: int(N_vis * r_l), computed exactly in integers.

    With `keep` (single-layer pruning, the FastV-style baseline): N_vis before layer l1 and
    int(N_vis * keep) from layer l1 on; l2 is unused.
    """
    if prune_layers is None:
        return [num_visual] * num_layers
    l1, l2 = prune_layers
    if keep is not None:
        kept = min(num_visual, math.floor(num_visual * keep + 1e-9))
        return [num_visual if layer < l1 else kept for layer in range(num_layers)]
    span = l2 - l1
    return [num_visual * min(span, max(0, l2 - 1 - layer)) // span for layer in range(num_layers)]


def merged_video_tokens(num_frames: int, frame_tokens: int, ratio: float, extra: int = 1) -> int:
    """Tokens of a video merged per frame, plus its unmerged extras (LLaVA-OV: one newline)."""
    return num_frames * merged_token_count(frame_tokens, ratio) + extra


def merged_anyres_image_tokens(base_tokens: int, grid_tokens: int, grid_rows: int, ratio: float) -> int:
    """Tokens of an anyres image (base view + unpadded crop grid + one newline per grid row).

    The base view and the crop grid are merged as two groups; newlines are kept (this project's
    extension of AIM to LLaVA-OneVision images).
    """
    return merged_token_count(base_tokens, ratio) + merged_token_count(grid_tokens, ratio) + grid_rows


# The first layers see raw patches; merging starts a quarter of the way into the tower.
_START_FRACTION = 0.25


def merge_start_layer(depth: int) -> int:
    """Index of the first encoder layer that runs on merged tokens (of `depth` layers)."""
    return max(1, math.floor(depth * _START_FRACTION)) if depth > 1 else 0


def kept_token_count(num_tokens: int, keep: float, protected: int = 0) -> int:
    """Tokens the merged layers carry: protected ones (e.g. CLIP's CLS) plus ceil(keep * the rest)."""
    return protected + max(1, math.ceil(keep * (num_tokens - protected)))
