"""Reference of one LLaVA-1.5 request with AIM, independent of vLLM (transformers + pure torch).

transformers' CLIP tower gives the hidden states; the features LLaVA uses are those of
`vision_feature_layer` (-2: the output of the second-to-last layer), CLS dropped. AIM's
similarity metric is that same layer's attention keys, averaged over heads (ToMe's metric),
recomputed here in plain torch from the layer's weights: k = k_proj(layer_norm1(input)). The
features merge with the keys as metric (`core.merge.merge_frames(..., metric=keys)`), then
transformers' projector maps them; `reference.decoder.ReferenceDecoder` runs the LLaMA LLM.
With `encoder_keep` < 1 the tower's layers from `merge_start_layer` on run on merged tokens
(`core.encoder_merge`, CLS apart), transformers' layers with the log-size bias as attention mask;
features and keys are copied back to the patches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aim_vllm.core.encoder_merge import merge_plan, merge_tokens, size_bias, unmerge_tokens
from aim_vllm.core.merge import merge_frames
from aim_vllm.core.token_counts import kept_token_count, merge_start_layer, merged_token_count
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
    def features_and_keys(self, image: Any, encoder_keep: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The selected tower features [576, C] of a PIL image and their keys [576, D] (CLS dropped)."""
        config = self.hf.config
        pixels = self.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        tower = self.hf.model.vision_tower
        first = 1 if config.vision_feature_select_strategy == "default" else 0
        if encoder_keep < 1.0:
            features, keys = self._merged_features_and_keys(pixels, encoder_keep)
            return features[first:], keys[first:]
        states = tower(pixels, output_hidden_states=True).hidden_states  # embeddings, then each layer
        feature = config.vision_feature_layer % len(states)  # index into `states`
        keys = layer_keys(
            tower.encoder.layers[feature - 1],
            states[feature - 1][0],
            config.vision_config.num_attention_heads,
        )
        return states[feature][0, first:], keys[first:]

    def _merged_features_and_keys(
        self, pixels: torch.Tensor, keep: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features [N, C] and keys [N, D] of the feature layer with the tower merged (CLS included)."""
        tower = self.hf.model.vision_tower
        vision = getattr(tower, "vision_model", tower)
        layers = vision.encoder.layers
        depth = self.hf.config.vision_feature_layer % (len(layers) + 1)  # layers up to the feature layer
        start = merge_start_layer(depth)
        hidden = vision.pre_layrnorm(vision.embeddings(pixels))
        for layer in layers[:start]:
            hidden = layer(hidden, None)
        dest = merge_plan(hidden, kept_token_count(hidden.shape[1], keep, protected=1), protected=1)
        hidden, sizes = merge_tokens(hidden, dest)
        for i in range(start, depth):
            if i == depth - 1:
                keys = layer_keys(layers[i], hidden[0], self.hf.config.vision_config.num_attention_heads)
            hidden = layers[i](hidden, size_bias(sizes, hidden.dtype))
        return unmerge_tokens(hidden, dest)[0], unmerge_tokens(keys[None], dest)[0]

    @torch.no_grad()
    def item(
        self, kind: str, data: Any, ratio: float, method: str = "aim", encoder_keep: float = 1.0
    ) -> torch.Tensor:
        """Projected embedding [merged_token_count(576, ratio), d] of a PIL image."""
        if kind != "image" or method != "aim":
            raise ValueError(f"LLaVA-1.5 takes images merged by AIM, not {kind} by {method}")
        features, keys = self.features_and_keys(data, encoder_keep)
        if ratio < 1.0:
            target = merged_token_count(features.shape[0], ratio)
            features = merge_frames(features[None], target, metric=keys[None])[0]
        return self.hf.model.multi_modal_projector(features)
