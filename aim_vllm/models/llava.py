"""AIM for LLaVA-1.5 in vLLM: token merging inside the CLIP tower, with its attention keys.

Subclasses of vllm==0.32.0 `model_executor/models/llava.py`, overriding only what changes (see
`models/common.py` for the flow). AIM's LLaVA-1.5 setting merges inside CLIP, before the
projector, with the attention keys of the last tower layer LLaVA uses as the similarity metric
(ToMe's metric: keys averaged over heads): 576 -> 288 -> 252 tokens for 43.75%, -> 72 for 12.5%.
Here:
1. the tower runs up to and including its feature layer (`vision_feature_layer=-2`: vLLM builds
   the tower only that deep), capturing that layer's keys;
2. CLS is dropped from the features and the keys ('default' strategy);
3. the features merge with bipartite passes whose similarity is computed on the keys, which are
   merged alongside (`core.merge.merge_frames(..., metric=keys)`), down to
   `merged_token_count(576, r)`;
4. the projector maps the merged features; the placeholder count is that merged count.
With `encoder_keep` < 1 (opt-in, the project's extension) the tower itself also runs on merged
tokens from `core.token_counts.merge_start_layer` on (`models.encoder_merging`), CLS apart, and
copies them back at its output, keys included, before step 2.
Merging needs a CLIP tower and a single feature layer (the processor refuses otherwise);
precomputed `image_embeds` are never merged. Pixtral-HF checkpoints (which vLLM also serves as
`LlavaForConditionalGeneration`) keep vLLM's own processor, so AIM keys have no effect there.
Pruning runs in the shared decoder on the LLaMA layers. AIM off (no AIM keys) is stock vLLM.

Dimensions:
    B: images; N: tower tokens (CLS + 576 patches); C: tower width; D: head size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import CLIPVisionConfig

from aim_vllm.compat import (
    MULTIMODAL_REGISTRY,
    ImageProcessorItems,
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    build_llava_or_pixtral_info,
    build_llava_or_pixtral_processor,
    tensor_model_parallel_all_reduce,
)
from aim_vllm.core.budget import VisualLayout
from aim_vllm.core.encoder_merge import proportional_attention, unmerge_tokens
from aim_vllm.core.item_params import ItemParams, field_name
from aim_vllm.core.level import budget_of, without_engine_keys
from aim_vllm.core.merge import merge_frames
from aim_vllm.core.token_counts import merge_start_layer, merged_token_count
from aim_vllm.models.common import (
    AimModelMixin,
    AimProcessorMixin,
    decode_items,
    schedule_from_kwargs,
)
from aim_vllm.models.encoder_merging import merge_for_tower, merged_layer, rows_by_keep

IMAGE = "image"


class AimLlavaMultiModalProcessor(AimProcessorMixin, LlavaMultiModalProcessor):
    """Merged placeholder counts and the per-item `aim_image` field."""

    aim_encoder_merging = True

    def aim_encoder_passes(self, mm_items) -> int:
        return len(list(_sizes(mm_items)))  # one CLIP pass per image

    def aim_layout(self, mm_items) -> VisualLayout:
        return VisualLayout(
            tuple(self.info.get_num_image_tokens(image_width=w, image_height=h) for w, h in _sizes(mm_items))
        )

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        processed = super()._apply_hf_processor_main(mm_items, without_engine_keys(hf_kwargs))
        schedule = schedule_from_kwargs(dict(hf_kwargs))
        if schedule.is_off or "pixel_values" not in processed:  # embedding inputs are never merged
            return processed
        if schedule.merges or schedule.merges_in_encoder:
            self._check_mergeable()
        flops = self.aim_encoder_flops(schedule, passes=1)  # one CLIP pass per image
        tokens = [self.info.get_num_image_tokens(image_width=w, image_height=h) for w, h in _sizes(mm_items)]
        budget = budget_of(hf_kwargs)
        params = [ItemParams(schedule, n, **flops).with_budget(budget).to_tensor() for n in tokens]
        processed[field_name(IMAGE)] = torch.stack(params)
        return processed

    def _check_mergeable(self) -> None:
        config = self.info.get_hf_config()
        if not isinstance(config.vision_config, CLIPVisionConfig) or not isinstance(
            config.vision_feature_layer, int
        ):
            raise ValueError(
                "aim_merge_ratio needs a CLIP vision tower with one feature layer (LLaVA-1.5); "
                f"this model has {type(config.vision_config).__name__}, "
                f"vision_feature_layer={config.vision_feature_layer}"
            )

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptUpdate]:
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        if not schedule_from_kwargs(dict(hf_processor_mm_kwargs)).merges:
            return updates
        # AIM: begin -- placeholders of items carrying AIM parameters get the merged count
        (stock,) = updates
        token_id = self.info.get_hf_config().image_token_index

        def replacement(item_idx: int):
            item = out_mm_kwargs[IMAGE][item_idx]
            if field_name(IMAGE) not in item:
                return stock.replacement(item_idx)
            params = ItemParams.from_tensor(item[field_name(IMAGE)].data)
            return [token_id] * merged_token_count(params.tokens_in, params.schedule.merge_ratio)

        return [PromptReplacement(modality=IMAGE, target=stock.target, replacement=replacement)]
        # AIM: end


def _sizes(mm_items) -> list[tuple[int, int]]:
    """(width, height) of each pixel image item."""
    images = mm_items.get(IMAGE) if IMAGE in mm_items else None
    if not isinstance(images, ImageProcessorItems):
        return []
    return [(s.width, s.height) for s in (images.get_image_size(i) for i in range(len(images)))]


def build_aim_processor(info, dummy_inputs):
    """vLLM's processor factory for LLaVA checkpoints, with AIM's processor for LLaVA proper."""
    if type(info) is LlavaProcessingInfo:
        return AimLlavaMultiModalProcessor(info, dummy_inputs)
    return build_llava_or_pixtral_processor(info, dummy_inputs)


@MULTIMODAL_REGISTRY.register_processor(
    build_aim_processor, info=build_llava_or_pixtral_info, dummy_inputs=LlavaDummyInputsBuilder
)
class AimLlavaForConditionalGeneration(AimModelMixin, LlavaForConditionalGeneration):
    """Merges images inside CLIP per their `aim_image` parameters; prunes in the decoder."""

    def embed_multimodal(self, **kwargs: object):
        # Adapted from LlavaForConditionalGeneration.embed_multimodal @ vllm==0.32.0
        params = decode_items(kwargs.pop(field_name(IMAGE), None)) or []
        image_input = self._parse_and_validate_image_input(**kwargs)
        schedules = [item.schedule for item in params]
        if (
            image_input is None
            or image_input["type"] != "pixel_values"
            or not any(s.merges or s.merges_in_encoder for s in schedules)
        ):
            return super().embed_multimodal(**kwargs)
        # AIM: begin
        pixels = image_input["pixel_values"]
        features, keys = [None] * len(schedules), [None] * len(schedules)
        for keep, rows in rows_by_keep([s.encoder_keep for s in schedules], pixels.device):
            f, k = self._tower_features_and_keys(pixels[rows], keep)  # (b, 576, C), (b, 576, D)
            for j, i in enumerate(rows.tolist()):
                features[i], keys[i] = f[j], k[j]
        items = [
            f
            if not s.merges
            else merge_frames(f[None], merged_token_count(f.shape[0], s.merge_ratio), metric=k[None])[0]
            for f, k, s in zip(features, keys, schedules, strict=True)
        ]
        sizes = [item.shape[0] for item in items]
        return self.multi_modal_projector(torch.cat(items)).split(sizes)
        # AIM: end

    def _tower_features_and_keys(
        self, pixel_values: torch.Tensor, encoder_keep: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower's selected features [B, 576, C] and its last layer's head-averaged keys [B, 576, D].

        Adapted from `CLIPVisionTransformer.forward`, `CLIPEncoderLayer.forward` and
        `CLIPAttention.forward` @ vllm==0.32.0 (same modules, same order), keeping the keys; with
        `encoder_keep` < 1 the layers from the start layer on run merged (CLS apart).
        """
        tower = self.vision_tower.vision_model
        hidden = tower.pre_layrnorm(tower.embeddings(pixel_values.to(tower.dtype)))  # (B, N, C)
        layers = tower.encoder.layers
        start = merge_start_layer(len(layers)) if encoder_keep < 1.0 else len(layers)
        sizes = dest = None
        for i, layer in enumerate(layers[:-1]):
            if i == start:
                hidden, sizes, dest = merge_for_tower(hidden, encoder_keep, protected=1)
            hidden = layer(hidden) if sizes is None else merged_layer(layer, hidden, sizes)
        if start == len(layers) - 1:
            hidden, sizes, dest = merge_for_tower(hidden, encoder_keep, protected=1)
        last = layers[-1]
        attn = last.self_attn
        q, k, v = attn.qkv_proj(last.layer_norm1(hidden))[0].chunk(3, dim=-1)
        if sizes is None:
            attended = attn.attn(q, k, v)
        else:
            attended = proportional_attention(q, k, v, sizes, attn.num_heads_per_partition, attn.scale)
        hidden = hidden + attn.out_proj(attended)[0]
        hidden = hidden + last.mlp(last.layer_norm2(hidden))
        if dest is not None:
            hidden, k = unmerge_tokens(hidden, dest), unmerge_tokens(k, dest)
        if tower.post_layernorm is not None:
            hidden = tower.post_layernorm(hidden)
        per_head = k.view(*k.shape[:2], attn.num_heads_per_partition, attn.head_dim)  # (B, N, heads, D)
        keys = _head_mean(per_head, attn)  # (B, N, D)
        first = _first_selected_token(self.config.vision_feature_select_strategy)
        return hidden[:, first:], keys[:, first:]


def _head_mean(keys: torch.Tensor, attn) -> torch.Tensor:
    """Mean over all heads of keys [B, N, heads, D]; with tensor parallelism each rank holds some
    heads, so the per-rank sums are all-reduced (every rank then merges identically)."""
    if attn.tp_size == 1:
        return keys.mean(dim=2)
    return tensor_model_parallel_all_reduce(keys.sum(dim=2)) / attn.num_heads


def _first_selected_token(strategy: str) -> int:
    """Index of the first tower token LLaVA keeps: 'default' drops CLS, 'full' keeps it."""
    if strategy not in ("default", "full"):
        raise ValueError(
            f"AIM merging supports the 'default' and 'full' feature strategies, not {strategy!r}"
        )
    return 1 if strategy == "default" else 0
