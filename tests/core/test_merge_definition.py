"""Merging against a formulation written from the paper's definition alone (no `core.merge` code).

AIM §3.1 (after ToMe's bipartite soft matching), one pass over a frame of T tokens removing r:
split the tokens into sources A (even indices) and destinations B (odd indices); give each source
its most similar destination (cosine similarity); merge the r sources whose best similarity is
highest into their destinations, each destination becoming the plain mean of itself and what it
received. Passes repeat, each removing at most half the tokens, until the target count is left.
The project's documented rules on top: similarities are compared at a resolution of 2^-10 (rounded
to the nearest multiple), equal ones go to the lower index (destination and source alike), and the
survivors keep their original order. Plain Python floats and lists here, one token at a time.
"""

from __future__ import annotations

import math

import pytest
import torch

from aim_vllm.core.merge import merge_frames_with_origin

RESOLUTION = 2.0**-10


def _cosine(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    norms = math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v))
    return round(dot / max(norms, 1e-12) / RESOLUTION) * RESOLUTION


def _one_pass(tokens: list[list[float]], origin: list[int], r: int):
    sources, dests = range(0, len(tokens), 2), range(1, len(tokens), 2)
    best = {}
    for a in sources:
        sims = [_cosine(tokens[a], tokens[b]) for b in dests]
        top = max(sims)
        best[a] = (top, dests[sims.index(top)])  # the first destination of the equal best
    ranked = sorted(sources, key=lambda a: (-best[a][0], a))
    merged = set(ranked[:r])
    members = {i: [tokens[i]] for i in range(len(tokens)) if i not in merged}
    for a in sorted(merged):
        members[best[a][1]].append(tokens[a])
    survivors = sorted(members)
    means = [[sum(column) / len(column) for column in zip(*members[i], strict=True)] for i in survivors]
    return means, [origin[i] for i in survivors]


def merge_by_definition(frame: list[list[float]], target: int):
    """(merged tokens, original index of each survivor) of one frame."""
    tokens, origin = frame, list(range(len(frame)))
    while len(tokens) > target:
        tokens, origin = _one_pass(tokens, origin, min(len(tokens) // 2, len(tokens) - target))
    return tokens, origin


def _frames(seed: int, frames: int, tokens: int, channels: int) -> torch.Tensor:
    """Features with structure (neighbours alike, as image patches are) and some exact copies."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(frames, tokens // 3 + 1, channels, generator=generator)
    x = base.repeat_interleave(3, dim=1)[:, :tokens] + 0.3 * torch.randn(
        frames, tokens, channels, generator=generator
    )
    x[:, 5] = x[:, 2]  # an exact copy: a tie at similarity 1
    return x


@pytest.mark.parametrize(
    ("tokens", "target"),
    [(36, 9), (36, 18), (36, 5), (49, 12), (50, 44), (27, 1), (20, 20)],
)
def test_engine_merge_equals_the_definition(tokens: int, target: int) -> None:
    """Same survivors (by original index) and the same means, frame by frame, including passes that
    merge only part of A (36 -> 5, 50 -> 44) and odd token counts."""
    x = _frames(tokens * 100 + target, 3, tokens, 8)
    merged, origin = merge_frames_with_origin(x, target)
    for f in range(x.shape[0]):
        want_tokens, want_origin = merge_by_definition(x[f].double().tolist(), target)
        assert origin[f].tolist() == want_origin
        torch.testing.assert_close(
            merged[f], torch.tensor(want_tokens, dtype=torch.float32), rtol=1e-5, atol=1e-5
        )


def test_all_equal_tokens_resolve_by_index() -> None:
    """Every similarity ties: the lowest-index sources merge, each into the first destination."""
    x = torch.ones(1, 8, 4) * torch.arange(1, 9).view(1, 8, 1)  # all parallel: cosine 1
    merged, origin = merge_frames_with_origin(x, 6)
    assert origin.tolist() == [[1, 3, 4, 5, 6, 7]]  # sources 0 and 2 went into destination 1
    assert merged[0, :, 0].tolist() == [(1 + 2 + 3) / 3, 4, 5, 6, 7, 8]
    assert merge_by_definition(x[0].double().tolist(), 6)[1] == origin[0].tolist()
