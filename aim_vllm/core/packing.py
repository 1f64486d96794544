"""AIM merging of LLaVA-OneVision's packed visual embeddings (pure torch, AIM §3.1).

vLLM's LLaVA-OneVision packs a video as [frame_0 ... frame_{F-1}, newline] (196 tokens per
frame after 2x2 pooling) and an anyres image as [base view (27x27), crop grid row_0 + newline,
..., row_{H-1} + newline]. These functions merge the visual tokens of such a packing and return
the same layout with fewer tokens; counts equal `token_counts.merged_*_tokens` exactly.
"""

from __future__ import annotations

import torch

from aim_vllm.core.baselines import reduce_frames_with_origin, reduce_video
from aim_vllm.core.token_counts import merged_token_count


def merge_video_embedding(
    embeds: torch.Tensor, num_frames: int, ratio: float, method: str = "aim"
) -> torch.Tensor:
    """Merge each frame of a packed video [F*T + 1, C] (last row: newline) -> [F*t + 1, C].

    `method`: "aim", or a baseline of `core.baselines` at the same token count.
    """
    frames, newline = embeds[:-1], embeds[-1:]
    frame_tokens = frames.shape[0] // num_frames
    if frame_tokens * num_frames != frames.shape[0]:
        raise ValueError(f"{frames.shape[0]} video tokens do not split into {num_frames} frames")
    target = merged_token_count(frame_tokens, ratio)
    merged = reduce_video(frames.view(num_frames, frame_tokens, -1), target, method)  # (F * t, C)
    return torch.cat([merged, newline])


def merge_anyres_image_embedding(
    embeds: torch.Tensor, base_tokens: int, grid_rows: int, ratio: float, method: str = "aim"
) -> torch.Tensor:
    """Merge a packed anyres image; each grid row's newline follows that row's last survivor.

    Args:
        embeds: [base_tokens + grid_rows * (W + 1), C], W grid columns, newline last in a row.
        base_tokens: tokens of the base view (merged as one frame).
        grid_rows: rows H of the unpadded crop grid.
    Returns:
        [merged(base) + merged(H*W) + H, C]; survivors keep their original order.
    """
    base, rest = embeds[:base_tokens], embeds[base_tokens:]
    if grid_rows <= 0 or rest.shape[0] % grid_rows:
        raise ValueError(f"{rest.shape[0]} grid tokens do not split into {grid_rows} rows")
    rows = rest.view(grid_rows, rest.shape[0] // grid_rows, -1)  # (H, W + 1, C)
    grid, newline = rows[:, :-1].flatten(0, 1), rows[0, -1]
    width = rows.shape[1] - 1
    merged_base = reduce_frames_with_origin(base[None], merged_token_count(base_tokens, ratio), method)[0][0]
    merged_grid, origin = reduce_frames_with_origin(
        grid[None], merged_token_count(grid.shape[0], ratio), method
    )
    # Interleave: survivors of row r (key 2r) then newline r (key 2r + 1), stable.
    keys = torch.cat([2 * (origin[0] // width), 2 * torch.arange(grid_rows, device=embeds.device) + 1])
    order = torch.sort(keys, stable=True).indices
    packed = torch.cat([merged_grid[0], newline.expand(grid_rows, -1)])[order]
    return torch.cat([merged_base, packed])
