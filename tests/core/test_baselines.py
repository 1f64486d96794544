"""Baselines at AIM's token counts: uniform pooling, seeded random drop, vLLM's EVS criterion,
FastV-style importance."""

import pytest
import torch

from aim_vllm.core.baselines import evs_video_with_origin, reduce_frames_with_origin, reduce_video
from aim_vllm.core.importance import importance, text_attention_importance
from aim_vllm.core.packing import merge_anyres_image_embedding, merge_video_embedding
from aim_vllm.core.schedule import AimSchedule
from aim_vllm.core.token_counts import merged_anyres_image_tokens, merged_video_tokens

X = torch.randn(3, 196, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["aim", "pool", "random"])
@pytest.mark.parametrize("target", [196, 98, 49, 37, 1])
def test_every_method_gives_the_same_counts(method: str, target: int) -> None:
    """Baselines compare at equal token counts; origins increase (the packing relies on it)."""
    out, origin = reduce_frames_with_origin(X, target, method)
    assert out.shape == (3, target, 8)
    assert origin.shape == (3, target)
    assert torch.all(origin[:, 1:] > origin[:, :-1])


def test_pool_is_window_means() -> None:
    out, origin = reduce_frames_with_origin(X, 49, "pool")
    torch.testing.assert_close(out[:, 5], X[:, 20:24].mean(1))
    assert origin[0, 5] == 23


def test_random_drop_is_seeded_and_keeps_tokens() -> None:
    a, origin = reduce_frames_with_origin(X, 49, "random", seed=7)
    b, _ = reduce_frames_with_origin(X, 49, "random", seed=7)
    c, _ = reduce_frames_with_origin(X, 49, "random", seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[1], X[1, origin[1]])  # tokens are copied, not averaged
    assert not torch.equal(origin[0], origin[1])  # frames differ


def test_evs_keeps_what_changes_between_frames() -> None:
    """vLLM's EVS criterion at the video's count: the first frame first, then the positions whose
    token moved most from the previous frame, in original order; frames keep unequal counts."""
    still = X[:1].repeat(3, 1, 1).clone()
    still[1:, 5] = torch.randn(8, generator=torch.Generator().manual_seed(1))  # changes in frame 1 only
    still[2, 7] = -still[1, 7]  # opposite direction in frame 2: the largest change (2)
    out, origin = evs_video_with_origin(still, 66)  # 3 x 66 = 198 = frame 0 (196) + 2
    assert origin.tolist() == [*range(196), 196 + 5, 2 * 196 + 7]
    assert origin.tolist() == sorted(origin.tolist())
    assert torch.equal(out, still.flatten(0, 1)[origin])
    assert reduce_video(still, 66, "evs").shape == (198, 8)
    with pytest.raises(ValueError, match="whole video"):
        reduce_frames_with_origin(still, 66, "evs")  # an image or a frame alone has no EVS


@pytest.mark.parametrize("method", ["aim", "pool", "random", "evs"])
def test_reduce_video_keeps_the_count(method: str) -> None:
    assert reduce_video(X, 37, method).shape == (3 * 37, 8)
    assert torch.equal(reduce_video(X, 196, method), X.flatten(0, 1))


@pytest.mark.parametrize("method", ["pool", "random"])
def test_packings_accept_baselines(method: str) -> None:
    video = torch.cat([torch.randn(2 * 196, 8), torch.full((1, 8), 7.0)])
    assert merge_video_embedding(video, 2, 0.25, method).shape[0] == merged_video_tokens(2, 196, 0.25)
    rows = torch.cat([torch.randn(3, 5, 8), torch.full((3, 1, 8), 7.0)], dim=1).flatten(0, 1)
    image = torch.cat([torch.randn(16, 8), rows])
    out = merge_anyres_image_embedding(image, 16, 3, 0.4, method)
    assert out.shape[0] == merged_anyres_image_tokens(16, 15, 3, 0.4)
    assert int((out == 7.0).all(-1).sum()) == 3
    assert merge_video_embedding(video, 2, 0.25, "evs").shape[0] == merged_video_tokens(2, 196, 0.25)


def test_fastv_importance_is_attention_from_text() -> None:
    """Naive check: mean over heads and text query rows of the causal attention probabilities."""
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(10, 2, 4, generator=g), torch.randn(10, 1, 4, generator=g)
    is_query = torch.tensor([False] * 6 + [True] * 4)
    got = text_attention_importance(q, k, is_query)
    expected = torch.zeros(10)
    for h in range(2):
        for i in range(6, 10):
            expected[: i + 1] += (q[i, h] @ k[: i + 1, 0].T / 2).softmax(0)
    torch.testing.assert_close(got, expected / 8)


@pytest.mark.parametrize("method", ["pagerank", "fastv"])
def test_masking_equals_removal_for_both_methods(method: str) -> None:
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(12, 4, 8, generator=g), torch.randn(12, 2, 8, generator=g)
    is_visual = torch.tensor([False] * 3 + [True] * 6 + [False] * 3)
    active = torch.ones(12, dtype=torch.bool)
    active[[4, 6]] = False
    masked = importance(method, q, k, is_visual, active)
    removed = importance(method, q[active], k[active], is_visual[active])
    torch.testing.assert_close(masked[active], removed)


def test_single_layer_pruning_counts() -> None:
    """FastV keeps a fraction from one layer on; the ramp is AIM's."""
    schedule = AimSchedule(1.0, (2, 3), prune_method="fastv", prune_keep=0.25)
    assert schedule.visual_kept(100, 6) == [100, 100, 25, 25, 25, 25]
    with pytest.raises(ValueError, match="prune_keep"):
        AimSchedule(1.0, None, prune_keep=0.5)
    with pytest.raises(ValueError, match="merge_method"):
        AimSchedule(0.5, merge_method="median")
