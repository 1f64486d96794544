"""Encoder merging inside windows (`core.window_merge`, Qwen2.5-VL's ViT): plans stay inside their
window, segments regroup, and segment attention is proportional attention per segment."""

from __future__ import annotations

import pytest
import torch

from aim_vllm.core.encoder_merge import merge_plan, merge_tokens, unmerge_tokens
from aim_vllm.core.token_counts import kept_token_count
from aim_vllm.core.window_merge import first_members, regroup, segment_attention, window_merge_plan

# Window lengths as the ViT makes them: full 8 x 8 windows (64 tokens) and partial edge windows.
WINDOWS = [64, 24, 64, 24, 32, 12]


@pytest.mark.parametrize("keep", [0.5, 0.25, 0.1, 1.0])
def test_each_window_merges_into_its_own_contiguous_range(keep) -> None:
    torch.manual_seed(0)
    x = torch.randn(sum(WINDOWS), 16)
    dest, merged = window_merge_plan(x, WINDOWS, keep)
    assert merged == [kept_token_count(n, keep) for n in WINDOWS]
    begin, merged_begin = 0, 0
    for length, count in zip(WINDOWS, merged, strict=True):
        local = dest[begin : begin + length]
        assert sorted(local.unique().tolist()) == list(range(merged_begin, merged_begin + count))
        begin, merged_begin = begin + length, merged_begin + count


def test_windows_of_one_length_merge_as_each_would_alone() -> None:
    """Batching equal windows changes nothing: window i's plan is `merge_plan` of its tokens."""
    torch.manual_seed(1)
    x = torch.randn(sum(WINDOWS), 8)
    dest, merged = window_merge_plan(x, WINDOWS, 0.3)
    begin, merged_begin = 0, 0
    for length, count in zip(WINDOWS, merged, strict=True):
        alone = merge_plan(x[None, begin : begin + length], count)[0]
        assert torch.equal(dest[begin : begin + length] - merged_begin, alone)
        begin, merged_begin = begin + length, merged_begin + count


def test_first_members_and_regroup() -> None:
    dest = torch.tensor([1, 0, 1, 2, 0, 2])
    assert first_members(dest, 3).tolist() == [1, 0, 3]
    assert regroup([88, 88, 44], WINDOWS, [10, 4, 10, 4, 5, 2]) == [14, 14, 7]
    with pytest.raises(ValueError, match="window boundary"):
        regroup([70], WINDOWS, [10, 4, 10, 4, 5, 2])


def _explicit(q, k, v, sizes, segments, scale) -> torch.Tensor:
    outs, begin = [], 0
    for length in segments:
        part = slice(begin, begin + length)
        begin += length
        scores = torch.einsum("qhd,khd->hqk", q[part], k[part]) * scale + sizes[part].log()
        outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[part]))
    return torch.cat(outs)


def test_segment_attention_is_proportional_attention_per_segment() -> None:
    torch.manual_seed(2)
    segments = [5, 3, 5, 7, 3]
    q, k, v = (torch.randn(sum(segments), 2, 8) for _ in range(3))
    sizes = torch.randint(1, 5, (sum(segments),)).float()
    out = segment_attention(q, k, v, sizes, segments, 0.3)
    torch.testing.assert_close(out, _explicit(q, k, v, sizes, segments, 0.3), atol=1e-5, rtol=1e-5)
    plain = segment_attention(q, k, v, torch.ones_like(sizes), segments, 0.3)
    assert not torch.allclose(out, plain, atol=1e-3)  # the size bias matters


def test_merged_copies_attend_as_the_unmerged_tokens() -> None:
    """Windows of exact copies: merging, attending with sizes and copying back equals attending
    over the unmerged tokens with the same segments (ToMe eq. 1 is exact for equal keys)."""
    torch.manual_seed(3)
    windows = [8, 8, 4]
    base = torch.randn(sum(windows) // 2, 2, 4)
    q, k, v = (t.repeat_interleave(2, dim=0) for t in (base, base + 1, base * 2))  # token 2i+1 = 2i
    dest, merged = window_merge_plan(q.flatten(1), windows, 0.5)
    merge = [merge_tokens(t.flatten(1)[None], dest[None]) for t in (q, k, v)]
    (qm, sizes), (km, _), (vm, _) = merge
    out = segment_attention(*(t[0].view(-1, 2, 4) for t in (qm, km, vm)), sizes[0], merged, 0.5)
    back = unmerge_tokens(out.flatten(1)[None], dest[None])[0].view(-1, 2, 4)
    torch.testing.assert_close(back, segment_attention(q, k, v, torch.ones(q.shape[0]), windows, 0.5))
