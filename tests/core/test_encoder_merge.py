"""Merging inside the vision encoder (`core.encoder_merge`): plans, merge/unmerge, proportional attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aim_vllm.core.encoder_merge import merge_plan, merge_tokens, proportional_attention, unmerge_tokens
from aim_vllm.core.token_counts import kept_token_count, merge_start_layer


def _pairs(batch: int, n: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Tokens [B, n, C] where token 2i+1 repeats token 2i (distinct otherwise)."""
    torch.manual_seed(seed)
    return torch.randn(batch, n // 2, channels).repeat_interleave(2, dim=1)


@pytest.mark.parametrize(
    ("n", "keep", "protected"), [(196, 0.5, 0), (729, 0.25, 0), (577, 0.1, 1), (10, 1.0, 0)]
)
def test_plan_reaches_the_kept_count(n, keep, protected) -> None:
    torch.manual_seed(n)
    x = torch.randn(3, n, 16)
    target = kept_token_count(n, keep, protected)
    dest = merge_plan(x, target, protected)
    assert dest.shape == (3, n)
    for row in dest:
        assert sorted(row.unique().tolist()) == list(range(target))
    assert (dest[:, :protected] == torch.arange(protected)).all()


def test_merged_tokens_are_size_weighted_means() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 50, 8)
    dest = merge_plan(x, 9)
    merged, sizes = merge_tokens(x, dest)
    for b in range(2):
        for m in range(9):
            members = x[b, dest[b] == m]
            assert sizes[b, m] == len(members)
            torch.testing.assert_close(merged[b, m], members.mean(0))


def test_identical_tokens_merge_and_unmerge_exactly() -> None:
    """Half the tokens are copies: merging to half joins each copy with its original."""
    x = _pairs(2, 64, 32)
    dest = merge_plan(x, 32)
    merged, sizes = merge_tokens(x, dest)
    assert (sizes == 2).all()
    torch.testing.assert_close(unmerge_tokens(merged, dest), x)


def test_proportional_attention_equals_attention_over_the_copies() -> None:
    """A key holding s identical tokens weighs as those s keys (ToMe eq. 1), so attention over the
    merged set, copied back, equals attention over the full set."""
    heads, width, m = 4, 32, 12
    torch.manual_seed(3)
    merged = torch.randn(2, m, width)
    sizes = torch.tensor([1, 2, 3, 1, 4, 1, 2, 1, 1, 3, 1, 2]).expand(2, m).float()
    dest = torch.repeat_interleave(torch.arange(m), sizes[0].long()).expand(2, -1)
    x = unmerge_tokens(merged, dest)
    wq, wk, wv = (torch.randn(width, width) for _ in range(3))

    def attention(t, bias=None):
        def split(u):
            return u.reshape(2, u.shape[1], heads, width // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(t @ wq), split(t @ wk), split(t @ wv), scale=0.3)
        return out.transpose(1, 2).reshape(2, t.shape[1], width)

    ours = proportional_attention(merged @ wq, merged @ wk, merged @ wv, sizes, heads, 0.3)
    torch.testing.assert_close(unmerge_tokens(ours, dest), attention(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(attention(merged), ours, atol=1e-3)  # the size bias matters


def test_plan_errors_and_start_layer() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        merge_plan(torch.randn(1, 10, 4), 11)
    with pytest.raises(ValueError, match="cannot merge"):
        merge_plan(torch.randn(1, 10, 4), 1, protected=1)
    assert [merge_start_layer(d) for d in (1, 2, 4, 26, 27, 32)] == [0, 1, 1, 6, 6, 8]
    assert kept_token_count(729, 0.5) == 365 and kept_token_count(577, 0.5, protected=1) == 289


def test_low_precision_tokens_merge_in_float32() -> None:
    """bf16 tokens are averaged in float32 and returned in bf16; sizes stay exact."""
    torch.manual_seed(2)
    x = torch.randn(1, 64, 16)
    dest = merge_plan(x, 20)
    merged, sizes = merge_tokens(x.bfloat16(), dest)
    assert merged.dtype == torch.bfloat16 and sizes.dtype == torch.float32
    torch.testing.assert_close(
        merged.float(), merge_tokens(x.bfloat16().float(), dest)[0], atol=1e-2, rtol=1e-2
    )
    assert sizes.sum() == 64
