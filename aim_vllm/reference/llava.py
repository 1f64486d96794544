"""Reference of one LLaVA-1.5 request with AIM, independent of vLLM (transformers + pure torch).

transformers' CLIP tower gives the hidden states; the features LLaVA uses are those of
`vision_feature_layer` (-2: the output of the second-to-last layer), CLS dropped. AIM's
similarity metric is that same layer's attention keys, averaged over heads (ToMe's metric),
recomputed here in plain torch from the layer's weights: k = k_proj(layer_norm1(input)). The
features merge with the keys as metric (`core.merge.merge_frames(..., metric=keys)`), then
transformers' projector maps them; `reference.decoder.ReferenceDecoder` runs the LLaMA LLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aim_vllm.core.merge import merge_frames
from aim_vllm.core.token_counts import merged_token_count
from aim_vllm.reference.decoder import ReferenceDecoder, load_llm_weights
from aim_vllm.reference.pipeline import ReferencePipeline


def layer_keys(layer, hidden: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Head-averaged attention keys [N, D] of a transformers `CLIPEncoderLayer` for its input [N, C]."""
    norm = layer.layer_norm1
    h = F.layer_norm(hidden, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    k = F.linear(h, layer.self_attn.k_proj.weight, layer.self_attn.k_proj.bias)  # (N, C)
    return k.view(k.shape[0], num_heads, -1).mean(dim=1)  # (N, D)


class LlavaReference(ReferencePipeline):
    """A LLaVA-1.5 checkpoint loaded for reference computations (float32, CPU)."""

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.hf = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.processor = AutoProcessor.from_pretrained(model_dir)
        weights, config = load_llm_weights(model_dir)
        self.decoder = ReferenceDecoder(weights, config)
        self.embed_tokens = weights["embed_tokens.weight"]
        self.visual_token_ids = (self.hf.config.image_token_index,)

    @torch.no_grad()
    def features_and_keys(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The selected tower features [576, C] of a PIL image and their keys [576, D] (CLS dropped)."""
        config = self.hf.config
        pixels = self.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        tower = self.hf.model.vision_tower
        states = tower(pixels, output_hidden_states=True).hidden_states  # embeddings, then each layer
        feature = config.vision_feature_layer % len(states)  # index into `states`
        keys = layer_keys(
            tower.encoder.layers[feature - 1],
            states[feature - 1][0],
            config.vision_config.num_attention_heads,
        )
        first = 1 if config.vision_feature_select_strategy == "default" else 0
        return states[feature][0, first:], keys[first:]

    @torch.no_grad()
    def item(self, kind: str, data: Any, ratio: float) -> torch.Tensor:
        """Projected embedding [merged_token_count(576, ratio), d] of a PIL image."""
        if kind != "image":
            raise ValueError(f"LLaVA-1.5 takes images, not {kind}")
        features, keys = self.features_and_keys(data)
        if ratio < 1.0:
            target = merged_token_count(features.shape[0], ratio)
            features = merge_frames(features[None], target, metric=keys[None])[0]
        return self.hf.model.multi_modal_projector(features)
