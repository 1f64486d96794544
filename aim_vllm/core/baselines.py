"""Token-reduction baselines at AIM's token counts, for accuracy-vs-FLOPs comparisons.

Each reducer maps frames [F, T, C] to [F, target, C] and returns, per output token, an index of the
original token it stands for (increasing, as AIM's merge does), so the same packing code serves all:
- "aim": bipartite merging (`merge.merge_frames_with_origin`, AIM §3.1);
- "pool": uniform average pooling over each frame's raster order into `target` windows
  (adaptive 1-D pooling; a token stands at its window's last index);
- "random": a seeded random subset of `target` tokens per frame, kept in original order.
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


REDUCERS: dict[str, Reducer] = {
    "aim": lambda x, target, seed=0: merge_frames_with_origin(x, target),
    "pool": pool_frames_with_origin,
    "random": drop_frames_with_origin,
}


def reduce_frames_with_origin(
    x: torch.Tensor, target: int, method: str = "aim", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce each frame of `x` [F, T, C] to `target` tokens with `method` (see module docstring)."""
    if target == x.shape[1]:
        return x, torch.arange(target, device=x.device).expand(x.shape[0], -1)
    return REDUCERS[method](x, target, seed)
