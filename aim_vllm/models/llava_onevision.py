"""AIM for LLaVA-OneVision in vLLM: per-frame / per-crop token merging after the projector.

Subclasses of vllm==0.32.0 `model_executor/models/llava_onevision.py`, overriding only what
changes (see `models/common.py` for the flow):
- videos: each frame's 196 pooled tokens merge to `merged_token_count(196, r)`; the single
  newline token stays last (AIM §3.1, the paper's setting);
- images (this project's extension): the base view and the unpadded crop grid merge as two
  groups; each grid row's newline stays at the end of that row;
- precomputed `image_embeds` inputs are never merged (their count is the given feature size);
- `encoder_keep` < 1 (opt-in, not AIM's): the SigLIP tower merges each frame / crop's tokens from
  an early layer and copies them back at its output (`models.encoder_merging`); the prompt layout
  stays as it is.
AIM off (no AIM keys) is stock vLLM: same prompt, same tensors, same outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

from aim_vllm.compat import (
    MULTIMODAL_REGISTRY,
    ImageProcessorItems,
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    VideoProcessorItems,
)
from aim_vllm.core.budget import VisualLayout
from aim_vllm.core.item_params import ItemParams, field_name
from aim_vllm.core.level import budget_of, without_engine_keys
from aim_vllm.core.packing import merge_anyres_image_embedding, merge_video_embedding
from aim_vllm.core.token_counts import merged_anyres_image_tokens, merged_video_tokens
from aim_vllm.models.common import (
    AimModelMixin,
    AimProcessorMixin,
    decode_items,
    item_encoder_keeps,
    schedule_from_kwargs,
)
from aim_vllm.models.encoder_merging import encode_rows


class AimLlavaOnevisionProcessingInfo(LlavaOnevisionProcessingInfo):
    """Adds the unmerged token layout of an image/video; counts stay upper bounds for profiling."""

    def image_parts(self, width: int, height: int) -> tuple[int, int, int]:
        """(base view tokens, unpadded grid tokens, grid rows) of an anyres image.

        Same quantities as `LlavaNextProcessingInfo.get_num_image_tokens`, kept apart.
        """
        config = self.get_hf_config()
        encoder = self.get_vision_encoder_info()
        rows_of_crops, cols_of_crops = get_anyres_image_grid_shape(
            (height, width), config.image_grid_pinpoints, encoder.get_image_size()
        )
        grid_tokens, rows = self._get_num_unpadded_features(
            original_height=height,
            original_width=width,
            npatches=encoder.get_patch_grid_length(),
            num_patch_height=rows_of_crops,
            num_patch_width=cols_of_crops,
        )
        base = self.get_num_image_tokens(image_width=width, image_height=height) - grid_tokens - rows
        return base, grid_tokens, rows

    def image_crops(self, width: int, height: int) -> int:
        """Crops of an anyres image the tower encodes: the base view and every grid crop."""
        config = self.get_hf_config()
        size = self.get_vision_encoder_info().get_image_size()
        rows, cols = get_anyres_image_grid_shape((height, width), config.image_grid_pinpoints, size)
        return 1 + rows * cols

    def frame_tokens(self, width: int, height: int) -> int:
        return self._get_num_frame_tokens(image_width=width, image_height=height)


class AimLlavaOnevisionMultiModalProcessor(AimProcessorMixin, LlavaOnevisionMultiModalProcessor):
    """Merged placeholder counts and the per-item `aim_image` / `aim_video` fields."""

    aim_merge_methods = ("aim", "pool", "random", "evs")  # AIM and the equal-count baselines
    aim_encoder_merging = True

    def aim_encoder_passes(self, mm_items) -> int:
        frames = sum(f for _, _, f in _video_sizes(mm_items))
        return frames + sum(self.info.image_crops(w, h) for w, h in _image_sizes(mm_items))

    def aim_layout(self, mm_items) -> VisualLayout:
        groups, extra = [], 0
        for width, height, frames in _video_sizes(mm_items):
            groups += [self.info.frame_tokens(width, height)] * frames
            extra += 1  # newline
        for width, height in _image_sizes(mm_items):
            base, grid, rows = self.info.image_parts(width, height)
            groups += [base, grid]
            extra += rows
        return VisualLayout(tuple(groups), extra)

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        processed = super()._apply_hf_processor_main(mm_items, without_engine_keys(hf_kwargs))
        schedule = schedule_from_kwargs(dict(hf_kwargs))
        if schedule.is_off:
            return processed
        videos = [
            ItemParams(
                schedule,
                self.info.get_num_video_tokens(image_width=w, image_height=h, num_frames=f),
                **self.aim_encoder_flops(schedule, passes=f),
            )
            for w, h, f in _video_sizes(mm_items)
        ]
        images = [self._image_params(schedule, w, h) for w, h in _image_sizes(mm_items)]
        budget = budget_of(hf_kwargs)
        for modality, params in (("video", videos), ("image", images)):
            if params:
                values = [p.with_budget(budget).to_tensor() for p in params]
                processed[field_name(modality)] = torch.stack(values)
        return processed

    def _image_params(self, schedule, width: int, height: int) -> ItemParams:
        base, grid, rows = self.info.image_parts(width, height)
        flops = self.aim_encoder_flops(schedule, passes=self.info.image_crops(width, height))
        return ItemParams(schedule, base + grid + rows, base_tokens=base, grid_rows=rows, **flops)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptUpdate]:
        schedule = schedule_from_kwargs(dict(hf_processor_mm_kwargs))
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        if not schedule.merges:
            return updates
        config = self.info.get_hf_config()
        counts = {
            "video": [
                merged_video_tokens(f, self.info.frame_tokens(w, h), schedule.merge_ratio)
                for w, h, f in _video_sizes(mm_items)
            ],
            "image": [
                merged_anyres_image_tokens(*self.info.image_parts(w, h), schedule.merge_ratio)
                for w, h in _image_sizes(mm_items)
            ],
        }
        token_ids = {"video": config.video_token_index, "image": config.image_token_index}
        merged = [
            PromptReplacement(
                modality=m, target=[token_ids[m]], replacement=_replacement(token_ids[m], counts[m])
            )
            for m in ("image", "video")
            if counts[m]
        ]
        return [u for u in updates if u.modality not in {r.modality for r in merged}] + merged


def _replacement(token_id: int, counts: list[int]):
    return lambda item_idx: [token_id] * counts[item_idx]


def _video_sizes(mm_items) -> list[tuple[int, int, int]]:
    """(width, height, frames) of each pixel video item."""
    videos = mm_items.get("video") if "video" in mm_items else None
    if not isinstance(videos, VideoProcessorItems):
        return []
    sizes = []
    for i in range(len(videos)):
        size = videos.get_frame_size(i)
        sizes.append((size.width, size.height, videos.get_num_frames(i)))
    return sizes


def _image_sizes(mm_items) -> list[tuple[int, int]]:
    """(width, height) of each pixel image item."""
    images = mm_items.get("image") if "image" in mm_items else None
    if not isinstance(images, ImageProcessorItems):
        return []
    return [(s.width, s.height) for s in (images.get_image_size(i) for i in range(len(images)))]


@MULTIMODAL_REGISTRY.register_processor(
    AimLlavaOnevisionMultiModalProcessor,
    info=AimLlavaOnevisionProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class AimLlavaOnevisionForConditionalGeneration(AimModelMixin, LlavaOnevisionForConditionalGeneration):
    """Merges each item's embedding per its `aim_<modality>` parameters; prunes in the decoder."""

    _aim_row_keeps: list[float] | None = None  # per frame / crop, while embed_multimodal runs

    def embed_multimodal(self, **kwargs: object):
        # Adapted from LlavaOnevisionForConditionalGeneration.embed_multimodal @ vllm==0.32.0
        params = {m: decode_items(kwargs.pop(field_name(m), None)) for m in ("image", "video")}
        by_modality = self._parse_and_validate_multimodal_inputs(**kwargs)
        embeddings: tuple[torch.Tensor, ...] = ()
        for modality, inputs in by_modality.items():
            self._aim_row_keeps = _row_keeps(modality, inputs, params[modality])
            try:
                if modality == "image":
                    items = self._process_image_input(inputs)
                else:
                    items = self._process_video_pixels(inputs)
            finally:
                self._aim_row_keeps = None
            items = [e.reshape(-1, e.shape[-1]) for e in items]
            if params[modality] is not None:
                items = self._merge(modality, inputs, items, params[modality])
            embeddings += tuple(items)
        return embeddings

    def _image_pixels_to_features(self, vision_tower, pixel_values: torch.Tensor) -> torch.Tensor:
        if self._aim_row_keeps is None:
            return super()._image_pixels_to_features(vision_tower, pixel_values)
        strategy = self.config.vision_feature_select_strategy
        return encode_rows(vision_tower, pixel_values, self._aim_row_keeps, strategy)

    def _video_pixels_to_features(self, vision_tower, pixel_values: torch.Tensor) -> torch.Tensor:
        # Adapted from LlavaOnevisionForConditionalGeneration._video_pixels_to_features @ vllm==0.32.0
        if self._aim_row_keeps is None:
            return super()._video_pixels_to_features(vision_tower, pixel_values)
        strategy = self.config.vision_feature_select_strategy
        features = encode_rows(vision_tower, pixel_values, self._aim_row_keeps, strategy)
        return self.apply_pooling(self.multi_modal_projector(features))

    def _merge(
        self, modality: str, inputs, items: list[torch.Tensor], params: list[ItemParams]
    ) -> list[torch.Tensor]:
        """Each item reduced per its `ItemParams` (AIM merging or a baseline of the same count)."""
        merged = []
        for i, (embeds, item) in enumerate(zip(items, params, strict=True)):
            ratio, method = item.schedule.merge_ratio, item.schedule.merge_method
            if ratio >= 1.0:
                merged.append(embeds)
            elif modality == "video":
                frames = len(inputs["pixel_values_videos"][i])
                merged.append(merge_video_embedding(embeds, frames, ratio, method))
            else:
                merged.append(
                    merge_anyres_image_embedding(embeds, item.base_tokens, item.grid_rows, ratio, method)
                )
        return merged


def _row_keeps(modality: str, inputs, params: list[ItemParams] | None) -> list[float] | None:
    """Encoder keep fraction of each frame / crop the tower encodes (None: all 1, the stock tower)."""
    pixels = inputs.get("pixel_values_videos" if modality == "video" else "pixel_values")
    if params is None or pixels is None:
        return None
    if (keeps := item_encoder_keeps(params)) is None:
        return None
    return [keep for keep, item in zip(keeps, pixels, strict=True) for _ in range(len(item))]
