"""Multi-modal token importance by PageRank over one layer's attention (AIM §3.2).

Each head's attention matrix M = softmax(Q K^T / sqrt(d_head) / tau) (causal) is read as a
transition matrix; starting from the uniform distribution, v <- v M is iterated (no damping),
so a token is important when much attention flows into it. The importance of a token is the RMS
over heads of its PageRank mass. Text tokens are never pruned; only visual tokens are ranked.

The paged attention kernels return no attention weights, so callers pass the layer's rotated
queries and keys and the logits are recomputed here one row block of a head chunk at a time:
never an N x N matrix in float32.

Tensor parallelism: a rank holds only some heads. `head_sum` (a sum over ranks, e.g. an
all-reduce) turns each rank's per-head sums into the sums over all heads, so every rank scores
with all heads, as AIM defines it; without it the heads given are all the heads.

Dimensions:
    N: tokens of one sequence; H: query heads; Hkv: key/value heads; D: head size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# From the reference implementation (LaVi-Lab/AIM, get_importance): temperature and iterations.
DEFAULT_TAU = 0.1
DEFAULT_ITERS = 5

HeadSum = Callable[[torch.Tensor], torch.Tensor]  # sums a per-rank partial over all ranks


def _mean_over_all_heads(total: torch.Tensor, num_heads: int, head_sum: HeadSum | None) -> torch.Tensor:
    """`total` (a sum over this rank's `num_heads` heads) divided by the heads of all ranks.

    One `head_sum` call carries both the sums and the head count.
    """
    if head_sum is None:
        return total / num_heads
    packed = head_sum(torch.cat([total, total.new_tensor([num_heads])]))
    return packed[:-1] / packed[-1]


def pagerank_importance(
    q: torch.Tensor,
    k: torch.Tensor,
    tau: float = DEFAULT_TAU,
    iters: int = DEFAULT_ITERS,
    heads_per_chunk: int = 8,
    row_block: int = 64,
    head_sum: HeadSum | None = None,
) -> torch.Tensor:
    """PageRank importance of every token of one causal sequence, in one pass over M.

    M is lower triangular, so v_{t+1}[j] = sum_{i >= j} v_t[i] M[i, j]: the mass of the rows
    [r0, r1) in every iteration is final once all later rows have passed theirs on. Row blocks
    are therefore taken last to first and each block of M (rows [r0, r1) against keys [0, r1)) is
    computed once, used for all iterations and dropped: the diagonal block passes mass inside the
    block iteration by iteration, then one product sends the block's mass of iterations 0..T-1
    to the earlier columns. Nothing N x N is ever held.

    Heads go in chunks of whole grouped-query groups: the query heads that read one key head
    share that head's keys without a copy (one chunk per key head from `heads_per_chunk` heads
    per group up), and each block's rows are one fused softmax. On a CPU this and row blocks of
    64 take 0.6-0.95 of the time of two-head chunks of 256 rows (measured on the development VM). For a
    group of 7 heads a block holds 1.75x the floats of such a chunk (logits and softmax) and a
    long prompt needs about as many blocks, so a GPU's memory and kernel launches stay about the same.

    Args:
        q: [N, H, D] rotated queries of the tokens the layer processed.
        k: [N, Hkv, D] rotated keys of the same tokens (H % Hkv == 0, grouped-query heads).
        tau: softmax temperature applied to the scaled logits.
        iters: PageRank iterations v <- v M from the uniform start.
        heads_per_chunk: query heads computed together, rounded to whole key-head groups.
        row_block: query rows per block of M.
        head_sum: under tensor parallelism, the sum over ranks (module docstring).
    Returns:
        [N] float32 importance, sqrt(mean over heads of v_h^2).
    """
    num_tokens, num_heads, head_size = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    kv_chunk = max(1, heads_per_chunk // group)
    side = min(row_block, num_tokens)
    future = torch.ones(side, side, dtype=torch.bool, device=q.device).triu(1)
    sum_sq = torch.zeros(num_tokens, dtype=torch.float32, device=q.device)
    for kv0 in range(0, num_kv_heads, kv_chunk):
        kv1 = min(kv0 + kv_chunk, num_kv_heads)
        queries = q[:, kv0 * group : kv1 * group].float() * (head_size**-0.5 / tau)
        queries = queries.transpose(0, 1).contiguous()  # (h, N, D)
        keys = k[:, kv0:kv1].float().transpose(0, 1).contiguous()  # (kv, N, D)
        keys = keys[:, None].expand(-1, group, -1, -1).flatten(0, 1)  # (h, N, D); a view for one key head
        mass = torch.zeros(len(queries), iters + 1, num_tokens, device=q.device)  # v_0 .. v_T
        mass[:, 0] = 1.0 / num_tokens
        for r0 in reversed(range(0, num_tokens, row_block)):
            r1 = min(r0 + row_block, num_tokens)
            logits = queries[:, r0:r1] @ keys[:, :r1].transpose(-1, -2)  # (h, r1 - r0, r1)
            logits[..., r0:].masked_fill_(future[: r1 - r0, : r1 - r0], float("-inf"))
            rows = logits.softmax(dim=-1)  # rows [r0, r1) of M
            block = mass[..., r0:r1]  # a view: (h, T + 1, r1 - r0)
            for t in range(1, iters + 1):
                block[:, t : t + 1] += block[:, t - 1 : t] @ rows[..., r0:]
            if r0:
                mass[:, 1:, :r0] += block[:, :iters] @ rows[..., :r0]
        sum_sq += mass[:, iters].square().sum(dim=0)
    return _mean_over_all_heads(sum_sq, num_heads, head_sum).sqrt()


def pagerank_importance_masked(
    q: torch.Tensor,
    k: torch.Tensor,
    active: torch.Tensor,
    tau: float = DEFAULT_TAU,
    iters: int = DEFAULT_ITERS,
    mask_queries: bool = True,
) -> torch.Tensor:
    """PageRank over all N tokens with inactive (pruned) tokens masked as queries and keys.

    The paper's definition written on the full matrix, all heads at once: inactive keys get no
    attention, inactive queries hold no mass (zero rows, zero start). It equals
    `pagerank_importance` on the active tokens alone; inactive tokens score 0.
    `mask_queries=False` is the reference code's key-only masking (LaVi-Lab/AIM): pruned rows
    stay as queries, start with mass and pass it on, so they still sway the ranking.
    """
    num_tokens, num_heads, head_size = q.shape
    k = k.repeat_interleave(num_heads // k.shape[1], dim=1)
    logits = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * head_size**-0.5
    allowed = torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=q.device).tril()
    allowed &= active[None, :] & (active[:, None] if mask_queries else True)
    attn = (logits / tau).masked_fill(~allowed, float("-inf")).softmax(dim=-1).nan_to_num(0.0)
    start = active.float() if mask_queries else torch.ones_like(active, dtype=torch.float32)
    v = (start / start.sum()).expand(num_heads, 1, num_tokens)
    for _ in range(iters):
        v = v @ attn
    return v.squeeze(1).square().mean(dim=0).sqrt()


def text_attention_importance(
    q: torch.Tensor,
    k: torch.Tensor,
    is_query: torch.Tensor,
    active: torch.Tensor | None = None,
    head_sum: HeadSum | None = None,
) -> torch.Tensor:
    """FastV-style importance: attention each token receives from the query rows `is_query` [N].

    The FastV baseline (Chen et al., 2024) at one layer: causal softmax(Q K^T / sqrt(d)) averaged over
    heads and over the text query rows. `active` [N] masks pruned tokens out as keys and queries
    (masking formulation). Returns [N] float32 (computed per head, like PageRank).
    """
    num_tokens, num_heads, head_size = q.shape
    group = num_heads // k.shape[1]
    causal = torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=q.device).tril()
    if active is not None:
        causal &= active[None, :]
        is_query = is_query & active
    rows = is_query.nonzero().squeeze(-1)
    total = torch.zeros(num_tokens, dtype=torch.float32, device=q.device)
    for head in range(num_heads):
        logits = (q[rows, head].float() @ k[:, head // group].float().T) * head_size**-0.5  # (Q, N)
        total += logits.masked_fill(~causal[rows], float("-inf")).softmax(-1).sum(0)
    return _mean_over_all_heads(total, num_heads, head_sum) / max(1, rows.numel())


def importance(
    method: str,
    q: torch.Tensor,
    k: torch.Tensor,
    is_visual: torch.Tensor,
    active: torch.Tensor | None = None,
    tau: float = DEFAULT_TAU,
    iters: int = DEFAULT_ITERS,
    head_sum: HeadSum | None = None,
) -> torch.Tensor:
    """Importance of `method` ("pagerank" or "fastv") over the tokens of one sequence.

    `active` (masking formulation): tokens still present; inactive tokens are masked out.
    `head_sum`: the sum over tensor-parallel ranks (removal formulation only).
    """
    if method == "fastv":
        return text_attention_importance(q, k, ~is_visual, active, head_sum)
    if active is None:
        return pagerank_importance(q, k, tau, iters, head_sum=head_sum)
    return pagerank_importance_masked(q, k, active, tau, iters)


def select_kept_tokens(
    importance: torch.Tensor, is_visual: torch.Tensor, num_visual_kept: int
) -> torch.Tensor:
    """Indices (increasing) of the tokens that survive: all text + the top visual tokens.

    Args:
        importance: [N] scores from `pagerank_importance`.
        is_visual: [N] bool, True for prunable visual tokens.
        num_visual_kept: visual tokens to keep (0 <= k <= number of visual tokens).
    Returns:
        [N_text + num_visual_kept] long indices in original order. Ties among equal scores
        go to the earlier token (stable sort), so the choice is deterministic.
    """
    visual_idx = is_visual.nonzero().squeeze(-1)
    if not 0 <= num_visual_kept <= visual_idx.numel():
        raise ValueError(f"num_visual_kept must be in [0, {visual_idx.numel()}], got {num_visual_kept}")
    order = torch.sort(importance[visual_idx], descending=True, stable=True).indices
    keep = torch.zeros_like(is_visual)
    keep[~is_visual] = True
    keep[visual_idx[order[:num_visual_kept]]] = True
    return keep.nonzero().squeeze(-1)
