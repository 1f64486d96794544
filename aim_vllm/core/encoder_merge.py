"""Token merging inside the vision encoder, undone at its output (ToMe's merge / unmerge).

An opt-in level on top of AIM (AIM leaves the encoder as it is; this is the project's
extension, `encoder:<keep>` in the level grammar): from layer `token_counts.merge_start_layer(depth)` on, each
frame / crop carries `ceil(keep * N)` tokens instead of its N patch tokens, so the rest of the
tower computes on fewer rows; its output copies each merged token back to every patch it holds,
so the patch grid, the projector, the pooling, AIM's merging and the prompt layout stay as they
are.

- Which tokens merge: bipartite soft matching (Bolya et al., "Token Merging", ICLR 2023, §3):
  alternate tokens form sets A and B, each A token's most cosine-similar B token is its match,
  and the A tokens with the most similar matches merge into them (similarities compared as in
  `core.merge.cosine_scores`, ties by index); rounds repeat (each merges at
  most half of the tokens) until `ceil(keep * N)` remain. The metric is the hidden state entering
  the start layer; merged tokens are size-weighted means.
- Proportional attention (ToMe eq. 1): a key holding s patches gets log(s) added to its scores,
  so softmax weighs it as s identical keys (exact when the merged tokens were equal).

Pure torch; the vLLM model files and the reference run the same plan on their own layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aim_vllm.core.merge import cosine_scores


def merge_plan(metric: torch.Tensor, target: int, protected: int = 0) -> torch.Tensor:
    """dest [B, N]: the merged token (in [0, target)) each of the N tokens of `metric` [B, N, C] joins.

    The first `protected` tokens never merge and keep indices 0..protected-1.
    """
    batch, n, _ = metric.shape
    if not protected < target <= n:
        raise ValueError(f"cannot merge {n} tokens ({protected} protected) to {target}")
    dest = torch.arange(n, device=metric.device).expand(batch, n)
    x, sizes = metric.float(), torch.ones(batch, n, device=metric.device)
    while n > target:
        step = _bipartite_round(x, min(n - target, (n - protected) // 2), protected)
        x, sizes = merge_tokens(x, step, sizes)
        dest = step.gather(1, dest)
        n = x.shape[1]
    return dest


def _bipartite_round(x: torch.Tensor, r: int, protected: int) -> torch.Tensor:
    """One ToMe round: dest [B, n] merging r tokens of A into their B matches.

    New layout: protected tokens, the A tokens kept (in order), then B.
    """
    batch, n, _ = x.shape
    device = x.device
    a_idx = torch.arange(protected, n, 2, device=device)
    b_idx = torch.arange(protected + 1, n, 2, device=device)
    scores = cosine_scores(x[:, a_idx], x[:, b_idx])  # [B, |A|, |B|]
    best, match = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    merged, kept = order[:, :r], order[:, r:].sort(dim=-1).values
    num_kept = a_idx.numel() - r
    dest = torch.empty(batch, n, dtype=torch.long, device=device)
    dest[:, :protected] = torch.arange(protected, device=device)
    rows = torch.arange(batch, device=device)[:, None]
    dest[rows, a_idx[kept]] = protected + torch.arange(num_kept, device=device)
    dest[:, b_idx] = protected + num_kept + torch.arange(b_idx.numel(), device=device)
    dest[rows, a_idx[merged]] = protected + num_kept + match.gather(1, merged)
    return dest


def merge_tokens(
    x: torch.Tensor, dest: torch.Tensor, sizes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(size-weighted means [B, M, C] in x's dtype, float32 sizes [B, M]) of tokens x [B, N, C]
    grouped by dest; accumulated in float32, as `core.merge.apply_merge` does."""
    batch, _, channels = x.shape
    target = int(dest.max()) + 1
    if sizes is None:
        sizes = torch.ones(dest.shape, device=x.device)
    sizes = sizes.float()
    total = torch.zeros(batch, target, device=x.device).scatter_add_(1, dest, sizes)
    sums = torch.zeros(batch, target, channels, device=x.device)
    sums.scatter_add_(1, dest[..., None].expand(-1, -1, channels), x.float() * sizes[..., None])
    return (sums / total[..., None]).to(x.dtype), total


def unmerge_tokens(x: torch.Tensor, dest: torch.Tensor) -> torch.Tensor:
    """Tokens [B, N, C]: each original token gets the merged token it joined (x [B, M, C])."""
    return x.gather(1, dest[..., None].expand(-1, -1, x.shape[-1]))


def size_bias(sizes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention scores [B, 1, 1, M]: log of each key's size (proportional attention)."""
    return sizes.log().to(dtype)[:, None, None, :]


def proportional_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sizes: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    """Bidirectional attention [B, M, H*D] over merged tokens q, k, v [B, M, H*D] (ToMe eq. 1)."""
    batch, m, width = q.shape
    q, k, v = (t.reshape(batch, m, num_heads, width // num_heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=size_bias(sizes, q.dtype), scale=scale)
    return out.transpose(1, 2).reshape(batch, m, width)
