"""PageRank importance (AIM §3.2) against a naive loop, and the top-k selection."""

import pytest
import torch

from aim_vllm.core.importance import (
    importance,
    pagerank_importance,
    pagerank_importance_masked,
    select_kept_tokens,
)


def _qk(n: int = 12, heads: int = 4, kv_heads: int = 2, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, heads, dim, generator=g), torch.randn(n, kv_heads, dim, generator=g)


def _naive(q: torch.Tensor, k: torch.Tensor, tau: float = 0.1, iters: int = 5) -> torch.Tensor:
    """Scalar loops over heads, rows and columns: the definition, written out."""
    n, heads, dim = q.shape
    group = heads // k.shape[1]
    per_head = []
    for h in range(heads):
        m = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            logits = [float(q[i, h] @ k[j, h // group]) / dim**0.5 / tau for j in range(i + 1)]
            row = torch.tensor(logits, dtype=torch.float64).softmax(0)
            m[i, : i + 1] = row
        v = torch.full((n,), 1.0 / n, dtype=torch.float64)
        for _ in range(iters):
            v = v @ m
        per_head.append(v)
    return torch.stack(per_head).square().mean(0).sqrt()


@pytest.mark.parametrize(
    ("kv_heads", "heads_per_chunk", "row_block"),
    [(2, 8, 1024), (2, 1, 1024), (1, 8, 1024), (4, 2, 1024), (4, 8, 5), (2, 4, 1), (1, 1, 12), (2, 2, 64)],
)
def test_pagerank_matches_naive_loop(kv_heads: int, heads_per_chunk: int, row_block: int) -> None:
    """Row blocks (causal: keys up to the block's last row) and head chunks change nothing.

    4 query heads over 1, 2 or 4 key heads: one chunk sharing one key head, chunks of one or
    several key-head groups, and multi-head attention (a group of one).
    """
    q, k = _qk(kv_heads=kv_heads)
    expected = _naive(q, k)
    got = pagerank_importance(q, k, heads_per_chunk=heads_per_chunk, row_block=row_block)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)


def test_pagerank_row_blocks_match_one_block_on_a_long_prompt() -> None:
    q, k = _qk(n=700, heads=4, kv_heads=2, dim=16, seed=3)
    whole = pagerank_importance(q, k, row_block=700)
    torch.testing.assert_close(pagerank_importance(q, k, row_block=128), whole, rtol=1e-5, atol=1e-8)


def test_pagerank_mass_is_a_distribution() -> None:
    """Without damping the mass per head stays 1: sum_j v_j = 1 for every head."""
    q, k = _qk(n=20, heads=1, kv_heads=1)
    v = pagerank_importance(q, k)  # one head: RMS = |v|
    torch.testing.assert_close(v.sum(), torch.tensor(1.0))


def test_masked_pagerank_equals_pagerank_on_the_active_tokens() -> None:
    """Masking pruned tokens as queries and keys == removing them (the two formulations)."""
    q, k = _qk(n=16)
    active = torch.tensor([True, False, True, True, False, True] * 2 + [True] * 4)
    masked = pagerank_importance_masked(q, k, active)
    removed = pagerank_importance(q[active], k[active])
    torch.testing.assert_close(masked[active], removed)
    assert torch.all(masked[~active] == 0)


def test_select_keeps_all_text_and_top_visual_in_order() -> None:
    scores = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3, 0.2])
    is_visual = torch.tensor([False, True, True, True, True, False])
    kept = select_kept_tokens(scores, is_visual, 2)
    assert kept.tolist() == [0, 2, 3, 5]


def test_select_ties_go_to_the_earlier_token() -> None:
    scores = torch.ones(6)
    is_visual = torch.tensor([False, True, True, True, True, False])
    assert select_kept_tokens(scores, is_visual, 1).tolist() == [0, 1, 5]


def test_select_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="num_visual_kept"):
        select_kept_tokens(torch.ones(3), torch.tensor([True, False, True]), 3)


def test_key_only_masking_is_the_reference_codes_variant() -> None:
    """Key-only masking (LaVi-Lab/AIM) lets pruned rows pass mass on: scores differ once tokens are
    pruned, and are identical while nothing is."""
    q, k = _qk(n=20)
    everything = torch.ones(20, dtype=torch.bool)
    torch.testing.assert_close(
        pagerank_importance_masked(q, k, everything),
        pagerank_importance_masked(q, k, everything, mask_queries=False),
    )
    some = everything.clone()
    some[[3, 7, 11]] = False
    ours = pagerank_importance_masked(q, k, some)
    theirs = pagerank_importance_masked(q, k, some, mask_queries=False)
    assert not torch.allclose(ours[some], theirs[some])
    assert torch.all(theirs[~some] == 0)  # pruned tokens still receive nothing as keys


def _over_ranks(method: str, q: torch.Tensor, k: torch.Tensor, is_visual: torch.Tensor, ranks: int):
    """Each tensor-parallel rank's importance, its heads only, with an all-reduce stand-in.

    Rank r holds query heads [r*H/ranks, (r+1)*H/ranks) and their key heads, as vLLM shards them.
    First pass: record every rank's partial; second: each rank gets the sum of all partials.
    """
    heads, kv_heads = q.shape[1] // ranks, k.shape[1] // ranks
    shards = [
        (q[:, r * heads : (r + 1) * heads], k[:, r * kv_heads : (r + 1) * kv_heads]) for r in range(ranks)
    ]
    partials: list[torch.Tensor] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        partials.append(x.clone())
        return x

    for q_r, k_r in shards:
        importance(method, q_r, k_r, is_visual, head_sum=record)
    total = torch.stack(partials).sum(0)
    return [importance(method, q_r, k_r, is_visual, head_sum=lambda _: total) for q_r, k_r in shards]


@pytest.mark.parametrize("method", ["pagerank", "fastv"])
def test_tensor_parallel_ranks_score_with_all_heads(method: str) -> None:
    """Under TP each rank sums its heads, then the sums over ranks: every rank gets the one-rank scores
    (and so keeps the same tokens); a rank scoring with its own heads alone would not."""
    q, k = _qk(n=40, heads=4, kv_heads=2, dim=8, seed=5)
    is_visual = torch.tensor([False] * 5 + [True] * 30 + [False] * 5)
    whole = importance(method, q, k, is_visual)
    per_rank = _over_ranks(method, q, k, is_visual, ranks=2)
    for scores in per_rank:
        torch.testing.assert_close(scores, whole, rtol=1e-6, atol=1e-9)
        assert torch.equal(
            select_kept_tokens(scores, is_visual, 12), select_kept_tokens(whole, is_visual, 12)
        )
    own_heads = importance(method, q[:, :2], k[:, :1], is_visual)
    assert not torch.allclose(own_heads, whole, rtol=1e-3)
