"""Encoder merging for a windowed vision transformer (Qwen2.5-VL's ViT): merge inside each window.

Qwen2.5-VL's ViT orders its tokens window by window (`get_window_index_thw`: windows of up to
8 x 8 patches, each frame a run of whole windows), attends inside each window in most blocks and
over each frame in the `fullatt_block_indexes` blocks, rotates queries and keys by each patch's
2-D position, and at its output merges every 2 x 2 patches (consecutive in window order) into one
LLM token. Merging (`core.encoder_merge`, ToMe) is therefore done per window: from
`token_counts.merge_start_layer(depth)` on, a window of w tokens carries
`kept_token_count(w, keep)`, a frame the sum over its windows, so window attention stays local
and full attention stays per frame; the output copies each merged token back to its patches
before the patch merger (`encoder_merge.unmerge_tokens`), so the 2 x 2 merge and everything after
it are unchanged.

A merged token's rotary position is its first member's (lowest index in window order): this
project's choice (ToMe has no positions inside the encoder; a mean of 2-D angles has no meaning).
Attention over merged tokens is proportional (log size added to each key's scores, ToMe eq. 1).

Pure torch; the vLLM model file and the reference run the same plan on their own blocks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from aim_vllm.core.encoder_merge import merge_plan
from aim_vllm.core.token_counts import kept_token_count


def window_merge_plan(
    metric: torch.Tensor, windows: Sequence[int], keep: float
) -> tuple[torch.Tensor, list[int]]:
    """(dest [N], merged length of each window): the merged token each of the N tokens joins.

    `metric` [N, C] holds the tokens in window order, `windows` the window lengths (summing to
    N). Merged tokens keep the window order: window i's occupy a contiguous range after window
    i-1's. Windows of one length merge as one batch.
    """
    if sum(windows) != metric.shape[0]:
        raise ValueError(f"windows of {sum(windows)} tokens for {metric.shape[0]} tokens")
    starts = _starts(windows)
    merged = [kept_token_count(length, keep) for length in windows]
    merged_starts = _starts(merged)
    dest = torch.empty(metric.shape[0], dtype=torch.long, device=metric.device)
    for length, members in _by_length(windows).items():
        rows = _rows(starts, members, length, metric.device)  # [G, length]
        target = merged[members[0]]
        local = merge_plan(metric[rows], target) if target < length else rows - rows[:, :1]
        offsets = torch.tensor([merged_starts[i] for i in members], device=metric.device)
        dest[rows] = local + offsets[:, None]
    return dest, merged


def first_members(dest: torch.Tensor, num_merged: int) -> torch.Tensor:
    """[M]: for each merged token, the lowest index of the tokens that joined it."""
    index = torch.arange(dest.shape[0], device=dest.device)
    first = torch.full((num_merged,), dest.shape[0], dtype=torch.long, device=dest.device)
    return first.scatter_reduce(0, dest, index, reduce="amin")


def regroup(segments: Sequence[int], windows: Sequence[int], merged_windows: Sequence[int]) -> list[int]:
    """Merged lengths of `segments` (e.g. frames), each a run of whole windows."""
    out, window = [], 0
    for length in segments:
        covered, merged = 0, 0
        while covered < length:
            covered += windows[window]
            merged += merged_windows[window]
            window += 1
        if covered != length:
            raise ValueError(f"a segment of {length} tokens does not end on a window boundary")
        out.append(merged)
    return out


def segment_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sizes: torch.Tensor,
    segments: Sequence[int],
    scale: float,
) -> torch.Tensor:
    """Proportional attention [M, H, D] of q, k, v [M, H, D] inside each segment (lengths summing
    to M); `sizes` [M] are the merged tokens' sizes. Segments of one length run as one batch."""
    out = torch.empty_like(q)
    log_sizes = sizes.float().log().to(q.dtype)
    starts = _starts(segments)
    for length, members in _by_length(segments).items():
        rows = _rows(starts, members, length, q.device)  # [G, length]
        qg, kg, vg = (t[rows].transpose(1, 2) for t in (q, k, v))  # [G, H, length, D]
        bias = log_sizes[rows][:, None, None, :]
        out[rows] = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=bias, scale=scale).transpose(1, 2)
    return out


def _starts(lengths: Sequence[int]) -> list[int]:
    starts, total = [], 0
    for length in lengths:
        starts.append(total)
        total += length
    return starts


def _by_length(lengths: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, length in enumerate(lengths):
        groups[length].append(i)
    return groups


def _rows(starts: Sequence[int], members: Sequence[int], length: int, device) -> torch.Tensor:
    first = torch.tensor([starts[i] for i in members], device=device)
    return first[:, None] + torch.arange(length, device=device)
