"""Reference of one Qwen2.5-VL request with AIM, independent of vLLM (transformers + pure torch).

transformers computes each item's unmerged features: vision tower + PatchMerger, [t * n, C],
temporal slices in order, each slice in raster order of the merged (h/2, w/2) grid. Every slice
merges on its own (`core.merge.merge_frames`, to `merged_token_count(n, r)` tokens). M-RoPE
positions are written out here from the item grids:
- text: consecutive positions on all three axes, continuing from the previous item's largest
  position + 1 (the original Qwen2.5-VL rule, which vLLM 0.32 implements; transformers 5.19's
  `get_rope_index` continues from start + max(h, w) instead, which differs after a video whose
  temporal positions outgrow its grid);
- an item at `start`: (start + floor(s * interval), start + row, start + column) for slice s,
  with `interval` = seconds per slice * tokens_per_second for videos, 1 for images;
- a merged token takes the position of its survivor, the unmerged token of its slice that the
  merged ones were averaged into (`QwenItem.origin`, this project's rule, see
  `models/qwen2_5_vl.py`); without an origin, the count-based positions at raster indices
  `core.merge.spread_indices` (the engine's positions before its encoder runs).
The LLM runs in `reference.decoder.ReferenceDecoder` with these [3, N] positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aim_vllm.core.baselines import reduce_frames_with_origin
from aim_vllm.core.merge import spread_indices
from aim_vllm.core.token_counts import merged_token_count
from aim_vllm.reference.decoder import ReferenceDecoder, load_llm_weights
from aim_vllm.reference.encoder_merging import qwen_merged_features
from aim_vllm.reference.pipeline import ReferencePipeline

# vLLM's frame rate for `video/jpeg` data URLs sent without `media_io_kwargs`
# (vllm==0.32.0 `VideoMediaIO.load_base64`); it sets the seconds per temporal slice.
VIDEO_FPS = 1.0


@dataclass
class QwenItem:
    """One image or video as the LLM sees it after merging."""

    embedding: torch.Tensor  # [t * k, C]
    grid_thw: tuple[int, int, int]  # patch grid before the PatchMerger
    time_interval: float  # M-RoPE temporal step between slices (1.0 for images)
    merged_per_slice: int  # k
    origin: torch.Tensor | None = None  # [t, k] raster index of each token's survivor in its slice


def item_positions(item: QwenItem, merge_size: int, start: int) -> tuple[torch.Tensor, int]:
    """M-RoPE positions [3, t * k] of an item placed at `start`, and the next text position."""
    t, h, w = item.grid_thw
    rows, cols = h // merge_size, w // merge_size
    times = (torch.arange(t, dtype=torch.float64) * item.time_interval).long()
    grid = torch.meshgrid(times, torch.arange(rows), torch.arange(cols), indexing="ij")
    full = torch.stack(grid).reshape(3, -1) + start  # (3, t * rows * cols), unmerged
    n = rows * cols
    if item.origin is None:
        keep = [s * n + i for s in range(t) for i in spread_indices(n, item.merged_per_slice)]
    else:
        keep = [s * n + int(i) for s in range(t) for i in item.origin[s]]
    return full[:, keep], int(full.max()) + 1


def mrope_positions(
    prompt_ids: list[int], items: list[QwenItem], visual_ids: tuple[int, ...], merge_size: int
) -> tuple[torch.Tensor, int]:
    """Positions [3, N] of a placeholder-expanded prompt, and the decode offset (max + 1 - N)."""
    runs = _placeholder_runs(prompt_ids, visual_ids)
    if len(runs) != len(items):
        raise ValueError(f"prompt has {len(runs)} placeholder runs for {len(items)} items")
    columns, cursor, next_pos = [], 0, 0
    for (begin, end), item in zip(runs, items, strict=True):
        columns.append(torch.arange(begin - cursor).expand(3, -1) + next_pos)  # text before
        positions, next_pos = item_positions(item, merge_size, next_pos + begin - cursor)
        if positions.shape[1] != end - begin:
            raise ValueError(f"placeholder run of {end - begin} tokens for an item of {positions.shape[1]}")
        columns.append(positions)
        cursor = end
    columns.append(torch.arange(len(prompt_ids) - cursor).expand(3, -1) + next_pos)  # text after
    positions = torch.cat(columns, dim=1)
    return positions, int(positions.max()) + 1 - len(prompt_ids)


def _placeholder_runs(prompt_ids: list[int], visual_ids: tuple[int, ...]) -> list[tuple[int, int]]:
    """[begin, end) of each maximal run of placeholder tokens."""
    runs: list[tuple[int, int]] = []
    for i, token in enumerate(prompt_ids):
        if token not in visual_ids:
            continue
        if runs and runs[-1][1] == i and prompt_ids[i - 1] == token:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


class Qwen2_5_VLReference(ReferencePipeline):
    """A Qwen2.5-VL checkpoint loaded for reference computations (float32, CPU)."""

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        self.hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.processor = AutoProcessor.from_pretrained(model_dir)
        weights, config = load_llm_weights(model_dir)
        self.decoder = ReferenceDecoder(weights, config)
        self.embed_tokens = weights["embed_tokens.weight"]
        hf_config = self.hf.config
        self.visual_token_ids = (hf_config.image_token_id, hf_config.video_token_id)
        self.merge_size = hf_config.vision_config.spatial_merge_size
        self.tokens_per_second = hf_config.vision_config.tokens_per_second

    @torch.no_grad()
    def features(
        self, kind: str, data: Any, encoder_keep: float = 1.0
    ) -> tuple[torch.Tensor, tuple[int, int, int], float]:
        """Unmerged features [t * n, C] of a PIL image or frames [F, H, W, 3], grid, time interval;
        with `encoder_keep` < 1 the ViT merges per window (`reference.encoder_merging`)."""
        if kind == "image":
            out = self.processor.image_processor(images=[data], return_tensors="pt")
            pixels, grid, interval = out["pixel_values"], out["image_grid_thw"], 1.0
        else:
            video = self.processor.video_processor
            out = video(videos=[data], return_tensors="pt", do_sample_frames=False)
            pixels, grid = out["pixel_values_videos"], out["video_grid_thw"]
            interval = video.temporal_patch_size / VIDEO_FPS * self.tokens_per_second
        if encoder_keep < 1.0:
            feats = qwen_merged_features(self.hf.model.visual, pixels, grid, encoder_keep)
        elif kind == "image":
            feats = self.hf.model.get_image_features(pixel_values=pixels, image_grid_thw=grid).pooler_output[
                0
            ]
        else:
            feats = self.hf.model.get_video_features(pixel_values_videos=pixels, video_grid_thw=grid)
            feats = feats.pooler_output[0]
        return feats, tuple(grid[0].tolist()), interval

    def item(
        self, kind: str, data: Any, ratio: float, method: str = "aim", encoder_keep: float = 1.0
    ) -> QwenItem:
        """The item reduced per temporal slice at `ratio` by `method` (AIM's merge, or the "pool" /
        "random" baseline of `core.baselines`; the ViT merged at `encoder_keep`)."""
        feats, grid, interval = self.features(kind, data, encoder_keep)
        slices = grid[0]
        per_slice = feats.shape[0] // slices
        merged = merged_token_count(per_slice, ratio)
        embedding, origin = reduce_frames_with_origin(feats.view(slices, per_slice, -1), merged, method)
        return QwenItem(embedding.flatten(0, 1), grid, interval, merged, origin)  # (t * k, C)

    def item_embedding(self, item: QwenItem) -> torch.Tensor:
        return item.embedding

    def positions(self, prompt_ids: list[int], items: list[QwenItem]) -> tuple[torch.Tensor, int]:
        return mrope_positions(prompt_ids, items, self.visual_token_ids, self.merge_size)
