"""Token-reduction baselines at AIM's token counts, for accuracy-vs-FLOPs comparisons.

Each reducer maps frames [F, T, C] to [F, target, C] and returns, per output token, an index of the
original token it stands for (increasing, as AIM's merge does), so the same packing code serves all:
- "aim": bipartite merging (`merge.merge_frames_with_origin`, AIM §3.1);
- "pool": uniform average pooling over each frame's raster order into `target` windows
  (adaptive 1-D pooling; a token stands at its window's last index);
- "random": a seeded random subset of `target` tokens per frame, kept in original order.
Video-level (the count is the video's, frames keep different numbers of tokens):
- "evs": vLLM's EVS criterion (`multimodal/video_prune/evs.compute_retention_mask`): a token's
  score is 1 - cosine similarity to the token at the same position of the previous frame, every
  token of the first frame scores above all others; the video's F * target best survive, in
  original order. It keeps what changes; AIM's merge keeps what is distinct within a frame.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from aim_vllm.core.merge import merge_frames_with_origin

Reducer = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


def pool_frames_with_origin(x: torch.Tensor, target: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool each frame's T tokens (raster order) into `target` contiguous windows."""
    num_frames, num_tokens, _ = x.shape
    pooled = F.adaptive_avg_pool1d(x.float().transpose(1, 2), target).transpose(1, 2).to(x.dtype)
    # adaptive pooling's window j ends at ceil((j + 1) * T / target)
    ends = [-(-(j + 1) * num_tokens // target) - 1 for j in range(target)]
    return pooled, torch.tensor(ends, device=x.device).expand(num_frames, -1)


def drop_frames_with_origin(x: torch.Tensor, target: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random `target` tokens of each frame (seeded per frame), in original order."""
    num_frames, num_tokens, _ = x.shape
    kept = []
    for frame in range(num_frames):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + frame)
        kept.append(torch.randperm(num_tokens, generator=generator)[:target].sort().values)
    origin = torch.stack(kept).to(x.device)
    return torch.gather(x, 1, origin[..., None].expand(-1, -1, x.shape[-1])), origin


def evs_video_with_origin(x: torch.Tensor, target: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the video's `F * target` tokens that change most from the previous frame.

    Returns ([F * target, C] in original order, [F * target] flat indices into F * T).
    """
    num_frames, num_tokens, _ = x.shape
    change = 1 - F.cosine_similarity(x[1:].float(), x[:-1].float(), dim=-1)  # (F - 1, T)
    first = torch.full((1, num_tokens), 255.0, device=x.device)  # the first frame is kept first
    order = torch.argsort(torch.cat([first, change]).flatten(), descending=True, stable=True)
    origin = order[: num_frames * target].sort().values
    return x.flatten(0, 1)[origin], origin


REDUCERS: dict[str, Reducer] = {
    "aim": lambda x, target, seed=0: merge_frames_with_origin(x, target),
    "pool": pool_frames_with_origin,
    "random": drop_frames_with_origin,
}


VIDEO_REDUCERS: dict[str, Reducer] = {"evs": evs_video_with_origin}


def reduce_frames_with_origin(
    x: torch.Tensor, target: int, method: str = "aim", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce each frame of `x` [F, T, C] to `target` tokens with `method` (see module docstring)."""
    if method in VIDEO_REDUCERS:
        raise ValueError(f"merge method {method!r} reduces a whole video (`reduce_video`), not frames")
    if target == x.shape[1]:
        return x, torch.arange(target, device=x.device).expand(x.shape[0], -1)
    return REDUCERS[method](x, target, seed)


def reduce_video(x: torch.Tensor, target: int, method: str = "aim", seed: int = 0) -> torch.Tensor:
    """A video's frames `x` [F, T, C] reduced to `F * target` tokens [F * target, C], in order."""
    if target == x.shape[1]:
        return x.flatten(0, 1)
    if method in VIDEO_REDUCERS:
        return VIDEO_REDUCERS[method](x, target, seed)[0]
    return reduce_frames_with_origin(x, target, method, seed)[0].flatten(0, 1)
