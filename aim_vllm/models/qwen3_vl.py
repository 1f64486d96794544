"""AIM for Qwen3-VL (dense) in vLLM: token merging per temporal slice after the patch merger.

Subclasses of vllm==0.32.0 `model_executor/models/qwen3_vl.py`, overriding only what changes
(see `models/common.py` for the flow; the Qwen2.5-VL file for the shared M-RoPE bookkeeping):
- merging (AIM §3.1): an item's tokens leave the vision tower in slices, one per temporal patch
  (2 frames; an image is one slice), each in raster order of the merged (h/2, w/2) grid. Each
  slice of n tokens merges on its own to k = `merged_token_count(n, r)`.
- DeepStack: vLLM's tower returns each token as [main | DeepStack level 1 | ... | level L] on the
  channel axis (the ViT's intermediate features, added to the visual rows after LLM layers
  0..L-1). The merge plan is computed from the main channels only and applied to the whole row,
  so every injected DeepStack row is the size-weighted mean of the same tokens as its main row:
  it still belongs to its kept token.
- prompt: an image is one run of k placeholders; a video is one `<t seconds><|vision_start|>`
  k placeholders `<|vision_end|>` group per slice, the timestamp text untouched (vLLM's own
  `get_video_repl` output with each run shortened).
- M-RoPE (interleaved in Qwen3-VL, which changes only how the LLM rotates): every slice starts at
  the position after the text before it, (start, start + row, start + column) on its grid, and text
  after it continues from the unmerged grid's largest position + 1, as in stock vLLM. A merged
  token takes the (row, column) of its survivor (`core.merge.merge_frames_with_origin`): counted
  positions at `spread_indices` when the request is added, then rewritten after the encoder from
  channels appended to the embedding (vLLM's EVS mechanism, `patches.py` item 3), as for Qwen2.5-VL;
  the channels carry the survivor's row and column and the token's index within its slice.
- pruning (AIM §3.2) in the shared decoder (`pruning/decoder.py`), which applies Qwen3's q/k
  norms and adds DeepStack level i to the hidden states after layer i (`aim_layer_additions`,
  vLLM's own buffer, as `Qwen3LLMModel.forward` does), only from layer L on: rows are dropped
  after the last injection, so a pruned row never needs its DeepStack rows and an injected row
  always lands on its token (pruning DeepStack rows alongside would change what the ViT's
  intermediate features reach, for no saving: layers 0..L-1 are a few of 28-36). A schedule
  starting earlier (`models.common.fit_first_prune_layer`): explicit layers are refused with a
  400 naming l1 >= L, since they are the client's choice; a preset (the engine's choice) moves
  its window to start at L; a budget whose best window starts earlier is met by merging alone.
  The published 2B/4B/8B (L = 3 of 28/36 layers) keep every preset's layers as they are. With
  no layer after L - 1 (a config shrunk below L + 1 layers) pruning is off for the engine,
  reported as skipped. Compaction of pruned decodes, per-layer KV (Design C) and TP come with
  `AimModelMixin`, as for the other models.
- `encoder_keep` < 1 (opt-in, not AIM's): the ViT merges each temporal slice's tokens from an
  early block and copies them back before its patch merger and every DeepStack merger after that
  block (`models.qwen3_encoder_merging`); the prompt layout and positions are those of the same
  level without it; usage reports the ViT's FLOPs (`core.encoder_flops.FrameVisionShape`).
- baselines at AIM's counts (`method:pool` / `method:random`, `core.baselines`): per slice, on
  whole rows (a token's DeepStack rows stand for the same tokens as its main row), each token at
  the position of the index it stands for, as for Qwen2.5-VL.
- not here: precomputed `image_embeds` / `video_embeds` inputs (never merged, nor encoded), vLLM's
  EVS / VidCom2 (`--video-pruning-rate`; AIM levels are refused alongside them). AIM off (no AIM
  keys) is stock.

Dimensions:
    t: temporal slices of an item; n: tokens per slice; k: merged tokens per slice;
    D: out_hidden_size; L: DeepStack levels; C = D * (1 + L) channels per vision-tower row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import cached_property, partial

import torch

from aim_vllm.compat import (
    MULTIMODAL_REGISTRY,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
    VideoProcessorItems,
)
from aim_vllm.core import position_channels
from aim_vllm.core.baselines import reduce_frames_with_origin
from aim_vllm.core.budget import EncoderCost, VisualLayout
from aim_vllm.core.encoder_flops import FrameVisionShape
from aim_vllm.core.item_params import ItemParams, field_name
from aim_vllm.core.level import budget_of, without_engine_keys
from aim_vllm.core.merge import merge_frames_with_origin, spread_indices
from aim_vllm.core.schedule import first_prune_layer
from aim_vllm.core.token_counts import merged_token_count
from aim_vllm.models.common import (
    AimModelMixin,
    AimProcessorMixin,
    encoder_flops_fields,
    schedule_from_kwargs,
)
from aim_vllm.models.qwen2_5_vl import (
    AimQwen2_5_VLMultiModalProcessor,
    MergedMropeMixin,
    QwenEmbedMixin,
    slice_shape,
)
from aim_vllm.models.qwen3_encoder_merging import encode_items

MODALITIES = ("image", "video")
_PIXEL_KEYS = {"image": "pixel_values", "video": "pixel_values_videos"}


def merge_item(
    rows: torch.Tensor, num_slices: int, ratio: float, main_width: int, method: str = "aim"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge each temporal slice of one item's tower output [t * n, C] -> [t * k, C], the plan from
    the first `main_width` (main) channels, and the raster index of each token's survivor [t, k].
    `method` "pool" / "random": the equal-count baselines (`core.baselines`) on whole rows, so a
    token's DeepStack rows stand for the same tokens as its main row, each at the index it stands for."""
    per_slice = rows.shape[0] // num_slices
    frames = rows.view(num_slices, per_slice, -1)  # (t, n, C)
    target = merged_token_count(per_slice, ratio)
    if method == "aim":
        merged, origin = merge_frames_with_origin(frames, target, metric=frames[..., :main_width])
    else:
        merged, origin = reduce_frames_with_origin(frames, target, method)
    return merged.flatten(0, 1), origin


def slice_channels(origin: torch.Tensor, columns: int) -> torch.Tensor:
    """[t * k, 3] integers for `content_positions`: each merged token's survivor row and column in
    its slice's (h/2, w/2) grid, and the token's index within its slice (a slice is one run)."""
    slices, kept = origin.shape
    flat = origin.flatten()
    within = torch.arange(kept).repeat(slices)
    return torch.stack([flat // columns, flat % columns, within], dim=1)


def shorten_runs(tokens: Sequence[int], token_id: int, length: int) -> list[int]:
    """`tokens` with every maximal run of `token_id` cut to its first `length` tokens."""
    out: list[int] = []
    run = 0
    for token in tokens:
        run = run + 1 if token == token_id else 0
        if run <= length:
            out.append(token)
    return out


def unmerged_frames_layout(
    input_tokens: list[int], features: list, merges: list, media_ids: tuple[int, ...]
) -> tuple[list[int], list, list[int]]:
    """The prompt as if unmerged, its features, and the unmerged indices the merged prompt keeps.

    Like `qwen2_5_vl.unmerged_layout`, for items whose placeholder holds t runs of k placeholders
    (a Qwen3-VL video: one run per slice, timestamp text between): each run becomes n tokens, of
    which the merged prompt keeps those at `spread_indices(n, k)`; text is kept as it is.

    Args:
        input_tokens: the merged prompt; `media_ids`: the placeholder token ids.
        features: `MultiModalFeatureSpec`s sorted by offset; merges: `item_merge` of each.
    """
    tokens: list[int] = []
    keep: list[int] = []
    shifted = []

    def copy(span: Sequence[int]) -> None:
        keep.extend(range(len(tokens), len(tokens) + len(span)))
        tokens.extend(span)

    cursor = 0
    for feature, merge in zip(features, merges, strict=True):
        pos = feature.mm_position
        copy(input_tokens[cursor : pos.offset])
        start, span = len(tokens), input_tokens[pos.offset : pos.offset + pos.length]
        if merge is None:
            copy(span)
        else:
            t, n, k = merge
            runs = _runs(span, media_ids)
            if len(runs) != t or any(end - begin != k for begin, end in runs):
                raise ValueError(f"placeholder runs {runs} for a merged item of {t} x {k}")
            inner = 0
            for begin, end in runs:
                copy(span[inner:begin])
                keep.extend(len(tokens) + i for i in spread_indices(n, k))
                tokens.extend([span[begin]] * n)
                inner = end
            copy(span[inner:])
        placeholder = replace(pos, offset=start, length=len(tokens) - start, is_embed=None)
        shifted.append(replace(feature, mm_position=placeholder))
        cursor = pos.offset + pos.length
    copy(input_tokens[cursor:])
    return tokens, shifted, keep


def _runs(tokens: Sequence[int], media_ids: tuple[int, ...]) -> list[tuple[int, int]]:
    """[begin, end) of each maximal run of placeholder tokens."""
    runs: list[tuple[int, int]] = []
    for i, token in enumerate(tokens):
        if token not in media_ids:
            continue
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


class AimQwen3VLMultiModalProcessor(AimProcessorMixin, Qwen3VLMultiModalProcessor):
    """Merged placeholder counts and the per-item `aim_image` / `aim_video` fields."""

    _aim_grids = AimQwen2_5_VLMultiModalProcessor._aim_grids  # same ProcessingInfo API, no super()
    aim_merge_methods = AimQwen2_5_VLMultiModalProcessor.aim_merge_methods  # AIM, per-slice baselines
    aim_encoder_merging = True

    @cached_property
    def _aim_vit(self) -> FrameVisionShape:
        shape = FrameVisionShape.from_hf_config(self.info.get_hf_config().to_dict())
        assert shape is not None, "a Qwen3-VL config names its ViT's DeepStack taps"
        return shape

    @cached_property
    def aim_first_prune_layer(self) -> int:
        """L, the DeepStack levels: rows are dropped only after layers >= L (module docstring)."""
        return first_prune_layer(self.info.get_hf_config().to_dict())

    def aim_layout(self, mm_items) -> VisualLayout:
        """One merge group per temporal slice (server-default processor sizes)."""
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        return VisualLayout(
            tuple((h // merge) * (w // merge) for t, h, w in self._aim_grids(mm_items) for _ in range(t))
        )

    def aim_text_in_items(self, mm_items) -> int:
        """A video's timestamp text and vision start/end tokens: counted by usage with the item
        (`_aim_tokens_in`), but text to the LLM, never merged or pruned (the budget solver then
        counts the FLOPs the engine executes)."""
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        grids = self._aim_grids(mm_items)  # images, then videos
        stamps = _video_timestamps(self.info, mm_items)
        videos = grids[len(grids) - len(stamps) :]
        return sum(
            self._aim_tokens_in(g, s) - g[0] * (g[1] // merge) * (g[2] // merge)
            for g, s in zip(videos, stamps, strict=True)
        )

    def aim_encoder_cost(self, mm_items) -> EncoderCost:
        grids = self._aim_grids(mm_items)
        return lambda keep: sum(self._aim_vit.item_flops(grid, keep) for grid in grids)

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        processed = super()._apply_hf_processor_main(mm_items, without_engine_keys(hf_kwargs))
        schedule = schedule_from_kwargs(dict(hf_kwargs))
        if schedule.is_off:
            return processed
        if self.info.ctx.get_mm_config().is_multimodal_pruning_enabled():
            raise ValueError(
                "AIM levels cannot be combined with the server's --video-pruning-rate (EVS/VidCom2)"
            )
        budget = budget_of(hf_kwargs)
        for modality in MODALITIES:
            if _PIXEL_KEYS[modality] not in processed:  # embedding inputs are never merged
                continue
            grids = processed[f"{modality}_grid_thw"].tolist()
            stamps = processed["timestamps"] if modality == "video" else [None] * len(grids)
            params = []
            for grid, times in zip(grids, stamps, strict=True):
                flops = encoder_flops_fields(partial(self._aim_vit.item_flops, grid), schedule.encoder_keep)
                item = ItemParams(schedule, self._aim_tokens_in(grid, times), **flops)
                params.append(item.with_budget(budget).to_tensor())
            processed[field_name(modality)] = torch.stack(params)
        return processed

    def _aim_tokens_in(self, grid: Sequence[int], timestamps) -> int:
        """The item's placeholder range unmerged, as usage counts it with AIM off: t * n for an
        image, and for a video its slices' timestamp text and vision start/end tokens too."""
        config = self.info.get_hf_config()
        t, n = slice_shape(grid, config.vision_config.spatial_merge_size)
        if timestamps is None:
            return t * n
        return len(
            self.get_video_repl(
                tokens_per_frame=[n] * t,
                timestamps=timestamps,
                tokenizer=self.info.get_tokenizer(),
                vision_start_token_id=config.vision_start_token_id,
                vision_end_token_id=config.vision_end_token_id,
                video_token_id=config.video_token_id,
                select_token_id=True,
            ).full
        )

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptUpdate]:
        updates = super()._get_prompt_updates(
            mm_items, without_engine_keys(hf_processor_mm_kwargs), out_mm_kwargs
        )
        if not schedule_from_kwargs(dict(hf_processor_mm_kwargs)).merges:
            return updates
        # AIM: begin -- the placeholder runs of items carrying AIM parameters get the merged count
        merge_size = self.info.get_hf_config().vision_config.spatial_merge_size
        config = self.info.get_hf_config()
        media_id = {"image": config.image_token_id, "video": config.video_token_id}
        stock = {update.modality: update for update in updates}

        def replacement(item_idx: int, modality: str):
            full = stock[modality].replacement(item_idx)
            item = out_mm_kwargs[modality][item_idx]
            if field_name(modality) not in item:
                return full
            ratio = ItemParams.from_tensor(item[field_name(modality)].data).schedule.merge_ratio
            _, n = slice_shape(item[f"{modality}_grid_thw"].data.tolist(), merge_size)
            tokens = full.full if isinstance(full, PromptUpdateDetails) else full
            shorter = shorten_runs(tokens, media_id[modality], merged_token_count(n, ratio))
            if isinstance(full, PromptUpdateDetails):  # a video: embeddings at its placeholders only
                return PromptUpdateDetails.select_token_id(shorter, media_id[modality])
            return shorter

        return [
            PromptReplacement(
                modality=m, target=stock[m].target, replacement=lambda i, m=m: replacement(i, m)
            )
            for m in MODALITIES
        ]
        # AIM: end


def _video_timestamps(info, mm_items) -> list[list[float] | None]:
    """Each pixel video's slice timestamps as vLLM's processor computes them (server defaults)."""
    videos = mm_items.get("video") if "video" in mm_items else None
    if not isinstance(videos, VideoProcessorItems):
        return []
    stamps = []
    for i in range(len(videos)):
        video = videos.get(i)
        if not isinstance(video, tuple):  # no metadata: no timestamps to count
            stamps.append(None)
            continue
        metadata = video[1]
        sampled = metadata.get("do_sample_frames", False)
        stamps.append(info._get_video_second_idx(metadata=metadata, do_sample_frames=sampled))
    return stamps


@MULTIMODAL_REGISTRY.register_processor(
    AimQwen3VLMultiModalProcessor,
    info=Qwen3VLProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class AimQwen3VLForConditionalGeneration(
    AimModelMixin, QwenEmbedMixin, MergedMropeMixin, Qwen3VLForConditionalGeneration
):
    """Merges each item per its `aim_<modality>` parameters (DeepStack rows with their tokens; inside
    the ViT at its `encoder_keep`); M-RoPE follows; prunes in the decoder from layer L on (module
    docstring)."""

    aim_merge_embedding_inputs = False  # precomputed embeddings carry no DeepStack rows to merge with

    @property
    def aim_first_prune_layer(self) -> int:
        """Rows are dropped only after layers >= L, the last DeepStack injection being after L - 1."""
        return self.deepstack_num_level if self.use_deepstack else 0

    @contextmanager
    def aim_layer_additions(self, inputs_embeds) -> Iterator[list[torch.Tensor] | None]:
        """Each DeepStack level's rows of this step [>= N, d] (zeros on text rows), from the buffer
        `embed_input_ids` filled, then cleared, as `Qwen3VLForConditionalGeneration.forward` does
        around the LLM (vllm==0.32.0)."""
        levels = None if inputs_embeds is None else self._get_deepstack_input_embeds(inputs_embeds.size(0))
        yield (
            None
            if levels is None
            else [levels[f"deepstack_input_embeds_{i}"] for i in range(self.deepstack_num_level)]
        )
        if levels is not None:
            self._clear_deepstack_input_embeds(inputs_embeds.size(0))

    @property
    def _aim_row_width(self) -> int:
        """Channels of one vision-tower row: main + DeepStack levels (C)."""
        return self.visual_dim * (1 + self.deepstack_num_level)

    def _aim_unmerged_layout(self, input_tokens: list[int], features, merges):
        """A video's t placeholder runs (timestamp text between) each unmerged on its own."""
        media = (self.config.image_token_id, self.config.video_token_id)
        return unmerged_frames_layout(input_tokens, features, merges, media)

    def _aim_encode(self, pixel_values: torch.Tensor, grid: list[list[int]], keeps: list[float]):
        return encode_items(self.visual, pixel_values, grid, keeps)

    def _merge(self, items, grid_thw: torch.Tensor, params: list[ItemParams]) -> list[torch.Tensor]:
        # AIM: begin
        merged = []
        merge_size = self.visual.spatial_merge_size
        for rows, grid, item in zip(items, grid_thw.tolist(), params, strict=True):
            ratio = item.schedule.merge_ratio
            if ratio >= 1.0:
                merged.append(rows)
                continue
            rows, origin = merge_item(rows, grid[0], ratio, self.visual_dim, item.schedule.merge_method)
            if self.aim_positions_after_encoder:
                rows = position_channels.attach(rows, slice_channels(origin, grid[2] // merge_size))
            merged.append(rows)
        return merged
        # AIM: end

    def get_encoder_cudagraph_config(self):
        """Encoder CUDA graphs bypass `embed_multimodal` (and so merging): keep the encoder eager."""
        return replace(super().get_encoder_cudagraph_config(), modalities=[])
