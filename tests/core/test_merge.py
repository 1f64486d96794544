"""Token merging (AIM §3.1): counts, plain means, order of survivors, determinism."""

import pytest
import torch

from aim_vllm.core.merge import apply_merge, merge_frames, merge_frames_with_origin, plan_merge
from aim_vllm.core.token_counts import merge_passes, merged_token_count


def _frames(num_frames: int = 3, num_tokens: int = 196, channels: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_frames, num_tokens, channels, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("tokens", "ratio", "expected"),
    [(196, 0.25, 49), (196, 0.5, 98), (196, 1.0, 196), (576, 0.4375, 252), (576, 0.125, 72), (5, 0.01, 1)],
)
def test_merged_token_count(tokens: int, ratio: float, expected: int) -> None:
    """The paper's counts (196 -> 49 video, 576 -> 252 / 72 LLaVA-1.5) come out exactly."""
    assert merged_token_count(tokens, ratio) == expected


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.01, float("nan")])
def test_merged_token_count_rejects_bad_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="merge ratio"):
        merged_token_count(196, ratio)


def test_merge_passes_follow_the_paper() -> None:
    """25% of 196 is two passes removing all of A each time: 196 -> 98 -> 49."""
    assert merge_passes(196, 49) == [98, 49]
    assert merge_passes(196, 196) == []
    assert merge_passes(49, 24) == [24, 1]


@pytest.mark.parametrize("ratio", [1.0, 0.9, 0.5, 0.3, 0.25, 0.125, 0.01])
def test_merge_frames_gives_the_counted_tokens(ratio: float) -> None:
    """Placeholder count == merged count, for every ratio (the invariant the engine relies on)."""
    x = _frames()
    target = merged_token_count(196, ratio)
    assert merge_frames(x, target).shape == (3, target, 16)


def test_ratio_one_is_identity() -> None:
    x = _frames()
    assert torch.equal(merge_frames(x, 196), x)


def test_each_output_is_the_plain_mean_of_its_inputs() -> None:
    """A destination becomes the unweighted mean of itself and every source merged into it."""
    x = _frames(num_tokens=20)
    plan = plan_merge(x, 7)
    out = apply_merge(x, plan)
    for f in range(x.shape[0]):
        for slot in range(plan.num_out):
            members = (plan.dst[f] == slot).nonzero().squeeze(-1)
            torch.testing.assert_close(out[f, slot], x[f, members].mean(dim=0))
            assert plan.kept[f, slot] in members  # the survivor is one of its members


def test_merge_pass_picks_most_similar_sources() -> None:
    """The r sources with the highest best-match similarity are the ones merged."""
    x = _frames(num_frames=1, num_tokens=10)
    x[0, 4] = x[0, 7] * 3.0  # source 4 is parallel to destination 7: similarity 1, merged first
    plan = plan_merge(x, 1)
    assert plan.dst[0, 4] == plan.dst[0, 7]
    assert 4 not in plan.kept[0].tolist()


def test_survivors_keep_original_order() -> None:
    """Documented order: every survivor at its original index, increasing."""
    x = _frames(num_tokens=30)
    plan = plan_merge(x, 9)
    assert torch.all(plan.kept[:, 1:] > plan.kept[:, :-1])
    _, origin = merge_frames_with_origin(x, 7)
    assert torch.all(origin[:, 1:] > origin[:, :-1])


def test_full_passes_keep_exactly_the_destinations() -> None:
    """With r = |A| the output is the B tokens in spatial order: 25% of 196 keeps 4k+3."""
    _, origin = merge_frames_with_origin(_frames(), 49)
    expected = torch.arange(3, 196, 4)
    assert torch.equal(origin, expected.expand(3, -1))


def test_frames_are_merged_independently() -> None:
    x = _frames()
    together = merge_frames(x, 49)
    alone = torch.cat([merge_frames(x[i : i + 1], 49) for i in range(3)])
    torch.testing.assert_close(together, alone)


def test_deterministic_and_tie_safe() -> None:
    """Identical tokens (all similarities tie): ties go to the lower index, so 12 -> 6 merges every
    source into destination 1 and 6 -> 5 merges the first survivor (1) into the next (3)."""
    x = torch.ones(2, 12, 4)
    merged, origin = merge_frames_with_origin(x, 5)
    assert origin.tolist() == [[3, 5, 7, 9, 11]] * 2
    assert torch.equal(merged, torch.ones(2, 5, 4))


def test_low_precision_input_keeps_dtype() -> None:
    x = _frames().to(torch.bfloat16)
    assert merge_frames(x, 49).dtype == torch.bfloat16


def test_copies_merge_alike_under_float_noise() -> None:
    """Exact copies (as `core.encoder_merge` leaves them) have self-similarity 1 +- 1e-7 by their
    bits; two implementations whose features differ by float noise must still plan alike."""
    torch.manual_seed(7)
    sizes = torch.randint(1, 4, (40,))
    dest = torch.repeat_interleave(torch.arange(40), sizes)[None]
    groups = torch.randn(1, 40, 64)
    noisy = groups * (1 + 1e-6 * torch.randn_like(groups))
    a, b = (t.gather(1, dest[..., None].expand(-1, -1, 64)) for t in (groups, noisy))
    r = 10
    assert torch.equal(plan_merge(a, r).dst, plan_merge(b, r).dst)
