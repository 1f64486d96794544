"""Merging with a separate similarity metric (LLaVA-1.5's CLIP keys) and count-only positions."""

import pytest
import torch

from aim_vllm.core.merge import (
    apply_merge,
    merge_frames,
    merge_frames_with_origin,
    plan_merge,
    spread_indices,
)
from aim_vllm.core.token_counts import merge_passes, merged_token_count


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_metric_equal_to_features_changes_nothing() -> None:
    """Passing the features as the metric is the default behaviour (backward compatible)."""
    x = _randn(2, 576, 8)
    for target in (288, 252, 72):
        torch.testing.assert_close(merge_frames(x, target, metric=x.clone()), merge_frames(x, target))


def test_metric_decides_the_matching_not_the_features() -> None:
    """The plan follows the metric: features with another similarity structure merge as the metric says."""
    x, keys = _randn(1, 40, 6, seed=1), _randn(1, 40, 4, seed=2)
    out, origin = merge_frames_with_origin(x, 20, metric=keys)
    plan = plan_merge(keys, 20)
    torch.testing.assert_close(out, apply_merge(x, plan))
    assert torch.equal(origin, plan.kept)
    assert not torch.equal(plan.dst, plan_merge(x, 20).dst)  # other sources go to other destinations


def test_metric_is_merged_alongside_for_later_passes() -> None:
    """Pass 2 compares the pass-1 merged metric (plain means), as ToMe's keys after a merge."""
    x, keys = _randn(3, 576, 6, seed=3), _randn(3, 576, 5, seed=4)
    x_step, m_step = x, keys
    for r in merge_passes(576, 252):  # 576 -> 288 -> 252 (the paper's 43.75%)
        plan = plan_merge(m_step, r)
        x_step, m_step = apply_merge(x_step, plan), apply_merge(m_step, plan)
    torch.testing.assert_close(merge_frames(x, 252, metric=keys), x_step)


@pytest.mark.parametrize(("ratio", "expected"), [(0.4375, 252), (0.125, 72), (0.5, 288), (0.3, 173)])
def test_clip_counts(ratio: float, expected: int) -> None:
    """576 CLIP tokens merge to exactly `merged_token_count` with a key metric."""
    target = merged_token_count(576, ratio)
    assert target == expected
    assert merge_frames(_randn(1, 576, 8), target, metric=_randn(1, 576, 3)).shape == (1, expected, 8)


def test_metric_shape_must_match() -> None:
    with pytest.raises(ValueError, match="metric"):
        merge_frames(_randn(1, 10, 4), 5, metric=_randn(1, 9, 4))


@pytest.mark.parametrize(("n", "k"), [(49, 49), (49, 12), (49, 25), (256, 64), (154, 39), (7, 1), (5, 4)])
def test_spread_indices(n: int, k: int) -> None:
    """k increasing indices in [0, n), each floor((j + 0.5) n / k); the identity when k == n."""
    idx = spread_indices(n, k)
    assert len(idx) == k and all(0 <= i < n for i in idx)
    assert all(a < b for a, b in zip(idx, idx[1:], strict=False))
    assert idx == [int((j + 0.5) * n / k) for j in range(k)]
    if k == n:
        assert idx == list(range(n))


def test_spread_indices_at_a_quarter_picks_one_per_two_by_two_block() -> None:
    """For 25% of an even square grid the picks fall every 4th token (one per 4 in raster order)."""
    assert spread_indices(16, 4) == [2, 6, 10, 14]


def test_spread_indices_rejects_bad_counts() -> None:
    with pytest.raises(ValueError):
        spread_indices(10, 0)
    with pytest.raises(ValueError):
        spread_indices(10, 11)
