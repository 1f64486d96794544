"""The windowed-ViT FLOPs model's windows are the ones vLLM's Qwen2.5-VL tower attends in."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from aim_vllm.core.encoder_flops import WindowedVisionShape


@pytest.mark.parametrize("grid", [(1, 16, 16), (2, 12, 20), (1, 36, 50), (3, 8, 8), (1, 4, 30)])
def test_window_lengths_match_vllm(grid: tuple[int, int, int]) -> None:
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VisionTransformer

    tower = SimpleNamespace(window_size=112, patch_size=14, spatial_merge_size=2, spatial_merge_unit=4)
    _, ends = Qwen2_5_VisionTransformer.get_window_index_thw(tower, *grid)  # window ends over all slices
    starts = [0, *ends.tolist()[:-1]]
    vllm_windows = [end - start for start, end in zip(starts, ends.tolist(), strict=True)]
    vit = WindowedVisionShape(1, 1, 1, 1, (), window=8, merge=2)
    assert vit.window_lengths(grid[1], grid[2]) * grid[0] == vllm_windows
