"""AIM for Qwen2.5-VL in vLLM: token merging per temporal slice after the PatchMerger.

Subclasses of vllm==0.32.0 `model_executor/models/qwen2_5_vl.py`, overriding only what changes
(see `models/common.py` for the flow):
- merging (AIM §3.1): an item's tokens come out of the PatchMerger in slices, one per temporal
  patch (`temporal_patch_size` = 2 frames; an image is one slice), each slice in raster order of
  the merged (h/2, w/2) grid. Each slice of n tokens merges independently to
  k = `merged_token_count(n, r)`; the item's placeholder count is t * k.
- M-RoPE positions: a merged token takes the (t, h, w) of its survivor, the token of its slice
  that the merged ones were averaged into (ToMe's destination; `core.merge.merge_frames_with_origin`).
  A survivor is a real grid cell, so positions stay integers on the unmerged grid, and a
  token's position is where its own feature came from. The runner fixes positions when a request
  is added, before any feature exists (`get_mrope_input_positions`: the k tokens of a slice get
  the positions at raster indices `core.merge.spread_indices`, a placeholder with the right
  temporal position); after the encoder, the model appends each merged token's survivor (h, w)
  to its embedding and `recompute_mrope_positions` rewrites the spatial axes, vLLM's EVS
  mechanism (`patches.py` item 3 enables it on V1 runners; where it is not enabled, e.g. Model
  Runner V2 or the ablation `AIM_VLLM_SPREAD_POSITIONS=1`, the count-based positions stay).
  Text after an item starts at the unmerged item's largest position + 1, as in stock vLLM, so it
  is unaffected by merging; the decode offset `mrope_position_delta` is recomputed for the
  shorter prompt.
- `encoder_keep` < 1 (opt-in, not AIM's): the ViT merges each window's tokens from an early block
  and copies them back before its patch merger (`models.qwen_encoder_merging`); the prompt
  layout and positions are those of the same level without it.
- baselines at AIM's counts (`method:pool` / `method:random`, `core.baselines`): per slice, each
  token at the position of the index it stands for (a pooled window's last token, a kept token);
- precomputed `image_embeds` / `video_embeds` inputs are never merged (their count is given);
  AIM levels cannot be combined with vLLM's EVS (`--video-pruning-rate`).
Pruning runs in the shared decoder (`pruning/decoder.py`), whose Qwen2 layers take the M-RoPE
positions [3, N] of the kept rows. AIM off (no AIM keys) is stock vLLM.

Dimensions:
    t: temporal slices of an item; n: tokens per slice; k: merged tokens per slice; C: channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property, partial

import numpy as np
import torch

from aim_vllm.compat import (
    MULTIMODAL_REGISTRY,
    ImageProcessorItems,
    PromptReplacement,
    PromptUpdate,
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
    VideoProcessorItems,
)
from aim_vllm.core import position_channels
from aim_vllm.core.baselines import reduce_frames_with_origin
from aim_vllm.core.budget import EncoderCost, VisualLayout
from aim_vllm.core.encoder_flops import WindowedVisionShape
from aim_vllm.core.item_params import ItemParams, field_name
from aim_vllm.core.level import budget_of, without_engine_keys
from aim_vllm.core.merge import spread_indices
from aim_vllm.core.token_counts import merged_token_count
from aim_vllm.models.common import (
    AimModelMixin,
    AimProcessorMixin,
    decode_items,
    encoder_flops_fields,
    item_encoder_keeps,
    schedule_from_kwargs,
)
from aim_vllm.models.qwen_encoder_merging import encode_items

MODALITIES = ("image", "video")
_PIXEL_KEYS = {"image": "pixel_values", "video": "pixel_values_videos"}


def slice_shape(grid_thw: Sequence[int], merge_size: int) -> tuple[int, int]:
    """(slices t, tokens per slice n) of an item with patch grid (t, h, w)."""
    t, h, w = (int(v) for v in grid_thw)
    return t, (h // merge_size) * (w // merge_size)


def merge_item(
    embeds: torch.Tensor, num_slices: int, ratio: float, method: str = "aim"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge each temporal slice of one item's embedding [t * n, C] -> [t * k, C], and the raster
    index within its slice of each merged token's survivor [t, k]. `method` "pool" / "random":
    the equal-count baselines (`core.baselines`), each token at the index it stands for."""
    per_slice = embeds.shape[0] // num_slices
    frames = embeds.view(num_slices, per_slice, -1)  # (t, n, C)
    merged, origin = reduce_frames_with_origin(frames, merged_token_count(per_slice, ratio), method)
    return merged.flatten(0, 1), origin


def survivor_channels(origin: torch.Tensor, columns: int) -> torch.Tensor:
    """[t * k, 3] integers a merged item carries to `recompute_mrope_positions`: its survivor's row
    and column in the slice's (h/2, w/2) grid, and the token's index within the item."""
    origin = origin.flatten()
    return torch.stack([origin // columns, origin % columns, torch.arange(origin.numel())], dim=1)


class AimQwen2_5_VLMultiModalProcessor(AimProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    """Merged placeholder counts and the per-item `aim_image` / `aim_video` fields."""

    aim_merge_methods = ("aim", "pool", "random")  # AIM and the per-slice equal-count baselines
    aim_encoder_merging = True

    @cached_property
    def _aim_vit(self) -> WindowedVisionShape:
        shape = WindowedVisionShape.from_hf_config(self.info.get_hf_config().to_dict())
        assert shape is not None, "a Qwen2.5-VL config names its ViT's windows"
        return shape

    def aim_layout(self, mm_items) -> VisualLayout:
        """One merge group per temporal slice (server-default processor sizes)."""
        merge = self._aim_vit.merge
        groups = [(h // merge) * (w // merge) for t, h, w in self._aim_grids(mm_items) for _ in range(t)]
        return VisualLayout(tuple(groups))

    def aim_encoder_cost(self, mm_items) -> EncoderCost:
        grids = self._aim_grids(mm_items)
        return lambda keep: sum(self._aim_vit.item_flops(grid, keep) for grid in grids)

    def _aim_grids(self, mm_items) -> list[tuple[int, int, int]]:
        """Each item's (temporal slices, height, width) in patches, as the HF processor will size it
        (server-default processor settings)."""
        hf_processor = self.info.get_hf_processor()
        processors = {"image": hf_processor.image_processor, "video": hf_processor.video_processor}
        vision = self.info.get_hf_config().vision_config
        grids = []
        for modality, (width, height, frames) in _pixel_item_sizes(mm_items):
            size, _ = self.info._get_vision_info(
                image_width=width,
                image_height=height,
                num_frames=frames,
                image_processor=processors[modality],
                mm_kwargs={},
                modality=modality,
            )
            slices = max(1, -(-frames // vision.temporal_patch_size))
            grids.append((slices, size.height // vision.patch_size, size.width // vision.patch_size))
        return grids

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        processed = super()._apply_hf_processor_main(mm_items, without_engine_keys(hf_kwargs))
        schedule = schedule_from_kwargs(dict(hf_kwargs))
        if schedule.is_off:
            return processed
        if self.info.ctx.get_mm_config().is_multimodal_pruning_enabled():
            raise ValueError("AIM levels cannot be combined with the server's --video-pruning-rate (EVS)")
        merge_size = self.info.get_hf_config().vision_config.spatial_merge_size
        budget = budget_of(hf_kwargs)
        for modality in MODALITIES:
            if _PIXEL_KEYS[modality] not in processed:  # embedding inputs are never merged
                continue
            params = []
            for grid in processed[f"{modality}_grid_thw"].tolist():
                t, n = slice_shape(grid, merge_size)
                flops = encoder_flops_fields(partial(self._aim_vit.item_flops, grid), schedule.encoder_keep)
                params.append(ItemParams(schedule, t * n, **flops).with_budget(budget).to_tensor())
            processed[field_name(modality)] = torch.stack(params)
        return processed

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptUpdate]:
        kwargs = without_engine_keys(hf_processor_mm_kwargs)
        updates = super()._get_prompt_updates(mm_items, kwargs, out_mm_kwargs)
        if not schedule_from_kwargs(dict(hf_processor_mm_kwargs)).merges:
            return updates
        # AIM: begin -- placeholders of items carrying AIM parameters get the merged count
        merge_size = self.info.get_hf_config().vision_config.spatial_merge_size
        stock = {update.modality: update for update in updates}

        def replacement(item_idx: int, modality: str):
            item = out_mm_kwargs[modality][item_idx]
            if field_name(modality) not in item:
                return stock[modality].replacement(item_idx)
            ratio = ItemParams.from_tensor(item[field_name(modality)].data).schedule.merge_ratio
            t, n = slice_shape(item[f"{modality}_grid_thw"].data.tolist(), merge_size)
            return [stock[modality].target[0]] * (t * merged_token_count(n, ratio))

        return [
            PromptReplacement(
                modality=m, target=stock[m].target, replacement=lambda i, m=m: replacement(i, m)
            )
            for m in MODALITIES
        ]
        # AIM: end


def _pixel_item_sizes(mm_items):
    """(modality, (width, height, frames)) of each pixel image/video item."""
    if isinstance(images := mm_items.get("image") if "image" in mm_items else None, ImageProcessorItems):
        for i in range(len(images)):
            size = images.get_image_size(i)
            yield "image", (size.width, size.height, 1)
    if isinstance(videos := mm_items.get("video") if "video" in mm_items else None, VideoProcessorItems):
        for i in range(len(videos)):
            video = videos.get(i)
            frames = video[0] if isinstance(video, tuple) else video  # Qwen videos carry metadata
            height, width = np.asarray(frames[0]).shape[:2]
            yield "video", (width, height, len(frames))


# -- M-RoPE positions of a merged prompt (pure bookkeeping over placeholder ranges) -------------


def item_merge(feature, merge_size: int) -> tuple[int, int, int] | None:
    """(t, n, k) of a merged item's slices, or None when the item is not merged."""
    data = feature.data
    name = field_name(feature.modality)
    if data is None or name not in data:
        return None
    ratio = ItemParams.from_tensor(data[name].data).schedule.merge_ratio
    if ratio >= 1.0:
        return None
    t, n = slice_shape(data[f"{feature.modality}_grid_thw"].data.tolist(), merge_size)
    return t, n, merged_token_count(n, ratio)


def unmerged_layout(
    input_tokens: list[int], features: list, merges: list
) -> tuple[list[int], list, list[int]]:
    """The prompt as if unmerged, its features, and the unmerged indices the merged prompt keeps.

    Args:
        input_tokens: the merged prompt.
        features: `MultiModalFeatureSpec`s sorted by offset; merges: `item_merge` of each.
    Returns:
        (unmerged tokens, features with unmerged placeholder ranges, kept indices in order).
    """
    tokens, shifted, keep = [], [], []
    cursor = 0  # next index of the merged prompt
    for feature, merge in zip(features, merges, strict=True):
        pos = feature.mm_position
        keep += range(len(tokens), len(tokens) + pos.offset - cursor)  # 1. text before the item
        tokens += input_tokens[cursor : pos.offset]
        start = len(tokens)
        if merge is None:  # 2a. an unmerged item keeps all its tokens
            length = pos.length
            keep += range(start, start + length)
        else:  # 2b. a merged item: k spread tokens of each slice of n
            t, n, k = merge
            if pos.length != t * k:
                raise ValueError(f"placeholder of {pos.length} tokens for a merged item of {t} x {k}")
            length = t * n
            keep += [start + s * n + i for s in range(t) for i in spread_indices(n, k)]
        tokens += [input_tokens[pos.offset]] * length
        shifted.append(replace(feature, mm_position=replace(pos, offset=start, length=length)))
        cursor = pos.offset + pos.length
    keep += range(len(tokens), len(tokens) + len(input_tokens) - cursor)  # 3. text after the last item
    tokens += input_tokens[cursor:]
    return tokens, shifted, keep


def content_positions(
    input_ids: torch.Tensor,
    embeddings: Sequence[torch.Tensor],
    positions: torch.Tensor,
    num_computed: int,
    media_ids: tuple[int, ...],
    width: int,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The spatial M-RoPE positions of merged tokens set to their survivors' (EVS's mechanism).

    Args:
        input_ids: [N] the prompt; `media_ids`: its placeholder token ids.
        embeddings: the request's item embeddings in this step, in prompt order, as vLLM's runner
            gathers them: the rows of each item that the step computes, a chunk's first item
            possibly from its middle. Rows of width `width` + channels carry `survivor_channels`.
        positions: [3, N] the request's positions (not modified).
        num_computed: prompt tokens computed before this step.
    Returns:
        (embeddings stripped of their channels, new positions). Temporal positions and text
        are untouched. An item's base position is the temporal position of its first row
        (slice 0), whatever was written on the spatial axes before, so a chunk, a preempted
        request's recompute, or a second call gives the same positions.
    """
    rows = torch.isin(input_ids, torch.tensor(media_ids)).nonzero()[:, 0]
    rows = rows[rows >= num_computed]  # the step's placeholder rows, in order
    out = positions.clone()
    stripped, cursor = [], 0
    for embedding in embeddings:
        here = rows[cursor : cursor + embedding.shape[0]].to(out.device)
        cursor += embedding.shape[0]
        if here.numel() != embedding.shape[0]:
            raise ValueError(
                f"{embedding.shape[0]} item rows for {here.numel()} placeholders left in the prompt"
            )
        if embedding.shape[1] == width:  # an unmerged item: stock positions
            stripped.append(embedding)
            continue
        embedding, values = position_channels.detach(embedding, width)
        values = values.to(out.device)
        base = out[0, here - values[:, 2]]  # the item's first row: slice 0, at the item's start
        out[1, here] = base + values[:, 0]
        out[2, here] = base + values[:, 1]
        stripped.append(embedding)
    return stripped, out


class MergedMropeMixin:
    """M-RoPE of merged items, shared by the Qwen-VL models (put before vLLM's model class): counted
    positions when a request is added, survivors' positions after the encoder (module docstring)."""

    aim_positions_after_encoder = False  # set by the runner patch that enables the recompute

    def _aim_unmerged_layout(self, input_tokens: list[int], features, merges):
        """The prompt as if unmerged, its features, and the indices the merged prompt keeps."""
        return unmerged_layout(input_tokens, features, merges)

    @property
    def _aim_row_width(self) -> int:
        """Channels of one merged embedding row, before the position channels."""
        return self.config.get_text_config().hidden_size

    def get_mrope_input_positions(self, input_tokens, mm_features):
        """Overrides vLLM's `get_mrope_input_positions` (Qwen2.5-VL, Qwen3-VL; vllm==0.32.0).

        Stock positions of the unmerged prompt, restricted to the tokens the merged prompt keeps.
        """
        features = sorted(mm_features, key=lambda f: f.mm_position.offset)
        merges = [item_merge(f, self.config.vision_config.spatial_merge_size) for f in features]
        if all(m is None for m in merges):
            return super().get_mrope_input_positions(input_tokens, mm_features)
        tokens, shifted, keep = self._aim_unmerged_layout(list(input_tokens), features, merges)
        positions, _ = super().get_mrope_input_positions(tokens, shifted)
        positions = positions[:, keep]  # (3, len(input_tokens))
        return positions, int(positions.max()) + 1 - len(input_tokens)

    def recompute_mrope_positions(
        self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens
    ):
        """Overrides vLLM's `recompute_mrope_positions` (Qwen2.5-VL, Qwen3-VL; vllm==0.32.0):
        vLLM's EVS when the server prunes with it, else merged tokens at their survivors."""
        if self.is_multimodal_pruning_enabled:
            return super().recompute_mrope_positions(
                input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens
            )
        ids = torch.as_tensor(input_ids, dtype=torch.long).cpu()
        media = (self.config.image_token_id, self.config.video_token_id)
        embeddings, positions = content_positions(
            ids, multimodal_embeddings, mrope_positions, num_computed_tokens, media, self._aim_row_width
        )
        return embeddings, positions, int(positions.max()) + 1 - len(ids)


class QwenEmbedMixin:
    """`embed_multimodal` of the Qwen-VL models (put before vLLM's model class): each pixel item
    encoded at its encoder keep (`_aim_encode`; the stock tower at 1), then merged per its
    `aim_<modality>` parameters (`_merge`); both model specific."""

    aim_merge_embedding_inputs = True  # precomputed `*_embeds` items merge too (Qwen3-VL: never)

    def _aim_encode(self, pixel_values: torch.Tensor, grid: list[list[int]], keeps: list[float]):
        raise NotImplementedError

    def _merge(self, items, grid_thw: torch.Tensor, params: list[ItemParams]) -> list[torch.Tensor]:
        raise NotImplementedError

    def embed_multimodal(self, **kwargs: object):
        # Adapted from Qwen2_5_VLForConditionalGeneration.embed_multimodal @ vllm==0.32.0 (Qwen3-VL's
        # has the same structure)
        params = {m: decode_items(kwargs.pop(field_name(m), None)) for m in MODALITIES}
        if all(p is None for p in params.values()):
            return super().embed_multimodal(**kwargs)
        if self.is_multimodal_pruning_enabled:
            raise ValueError("AIM merging cannot run with vLLM's video pruning (EVS, VidCom2) enabled")
        embeddings: tuple[torch.Tensor, ...] = ()
        for modality, inputs in self._parse_and_validate_multimodal_inputs(**kwargs).items():
            pixels = inputs["type"] == _PIXEL_KEYS[modality]
            if (keeps := pixel_encoder_keeps(modality, inputs, params[modality])) is not None:
                items = self._aim_encode(
                    inputs[_PIXEL_KEYS[modality]], inputs[f"{modality}_grid_thw"].tolist(), keeps
                )
            elif modality == "image":
                items = self._process_image_input(inputs)
            else:
                items = self._process_video_input(inputs)
            if params[modality] is not None and (pixels or self.aim_merge_embedding_inputs):
                items = self._merge(items, inputs[f"{modality}_grid_thw"], params[modality])
            embeddings += tuple(items)
        return embeddings


@MULTIMODAL_REGISTRY.register_processor(
    AimQwen2_5_VLMultiModalProcessor,
    info=Qwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class AimQwen2_5_VLForConditionalGeneration(
    AimModelMixin, QwenEmbedMixin, MergedMropeMixin, Qwen2_5_VLForConditionalGeneration
):
    """Merges each item per its `aim_<modality>` parameters; M-RoPE follows; prunes in the decoder."""

    def _aim_encode(self, pixel_values: torch.Tensor, grid: list[list[int]], keeps: list[float]):
        return encode_items(self.visual, pixel_values, grid, keeps)

    def _merge(self, items, grid_thw: torch.Tensor, params: list[ItemParams]) -> list[torch.Tensor]:
        # AIM: begin
        merged = []
        merge_size = self.visual.spatial_merge_size
        for embeds, grid, item in zip(items, grid_thw.tolist(), params, strict=True):
            ratio = item.schedule.merge_ratio
            if ratio >= 1.0:
                merged.append(embeds)
                continue
            embeds, origin = merge_item(embeds, grid[0], ratio, item.schedule.merge_method)
            if self.aim_positions_after_encoder:
                channels = survivor_channels(origin, grid[2] // merge_size)
                embeds = position_channels.attach(embeds, channels)
            merged.append(embeds)
        return merged
        # AIM: end

    def get_encoder_cudagraph_config(self):
        """Encoder CUDA graphs bypass `embed_multimodal` (and so merging): keep the encoder eager."""
        return replace(super().get_encoder_cudagraph_config(), modalities=[])


def pixel_encoder_keeps(modality: str, inputs, params: list[ItemParams] | None) -> list[float] | None:
    """Each pixel item's encoder keep fraction (None when all are 1: the stock tower runs)."""
    if params is None or inputs["type"] != _PIXEL_KEYS[modality]:  # embedding inputs: nothing to encode
        return None
    return item_encoder_keeps(params)
