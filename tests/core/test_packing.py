"""Merging LLaVA-OneVision packings keeps the layout: newline positions and exact counts."""

import pytest
import torch

from aim_vllm.core.packing import merge_anyres_image_embedding, merge_video_embedding
from aim_vllm.core.token_counts import merged_anyres_image_tokens, merged_video_tokens

NEWLINE = torch.full((8,), 7.0)


def _video(frames: int = 3, tokens: int = 196) -> torch.Tensor:
    body = torch.randn(frames * tokens, 8, generator=torch.Generator().manual_seed(0))
    return torch.cat([body, NEWLINE[None]])


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25, 0.3])
def test_video_count_and_trailing_newline(ratio: float) -> None:
    out = merge_video_embedding(_video(), 3, ratio)
    assert out.shape[0] == merged_video_tokens(3, 196, ratio)
    assert torch.equal(out[-1], NEWLINE)


def test_video_ratio_one_is_identity() -> None:
    video = _video()
    assert torch.equal(merge_video_embedding(video, 3, 1.0), video)


def _image(base: int = 16, rows: int = 3, width: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    grid = torch.randn(rows, width, 8, generator=g)
    rows_with_newline = torch.cat([grid, NEWLINE.expand(rows, 1, 8)], dim=1).flatten(0, 1)
    return torch.cat([torch.randn(base, 8, generator=g), rows_with_newline])


@pytest.mark.parametrize("ratio", [1.0, 0.6, 0.25, 0.05])
def test_image_count_and_one_newline_per_row(ratio: float) -> None:
    out = merge_anyres_image_embedding(_image(), 16, 3, ratio)
    assert out.shape[0] == merged_anyres_image_tokens(16, 15, 3, ratio)
    is_newline = (out == NEWLINE).all(-1)
    assert int(is_newline.sum()) == 3
    assert bool(is_newline[-1])  # the last row's newline closes the image


def test_image_ratio_one_is_identity() -> None:
    image = _image()
    assert torch.equal(merge_anyres_image_embedding(image, 16, 3, 1.0), image)


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(ValueError, match="frames"):
        merge_video_embedding(_video(), 5, 0.5)
    with pytest.raises(ValueError, match="rows"):
        merge_anyres_image_embedding(_image(), 16, 4, 0.5)
