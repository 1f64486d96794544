"""Reference for merging inside the vision encoder (`core.encoder_merge`), independent of vLLM.

transformers' own SigLIP layers run on the merged tokens, with the log-size bias given as their
additive attention mask (transformers' attention, not `proportional_attention`). `merged_tower`
stands in for the model's vision tower while transformers' `get_image_features` /
`get_video_features` run, so its projector, pooling and anyres packing are the stock ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from torch import nn

from aim_vllm.core.encoder_merge import merge_plan, merge_tokens, size_bias, unmerge_tokens
from aim_vllm.core.token_counts import kept_token_count, merge_start_layer


class _MergedTower(nn.Module):
    """A transformers SigLIP vision model whose `hidden_states[feature_layer]` is the merged run's."""

    def __init__(self, tower: nn.Module, keep: float, feature_layer: int) -> None:
        super().__init__()
        self.tower, self.keep, self.feature_layer = tower, keep, feature_layer

    def forward(self, pixel_values: torch.Tensor, **_: object) -> SimpleNamespace:
        vision = getattr(self.tower, "vision_model", self.tower)  # transformers may give either
        total = len(vision.encoder.layers)
        depth = self.feature_layer % (total + 1)  # layers whose output the model selects
        layers = vision.encoder.layers[:depth]
        hidden = vision.embeddings(pixel_values)
        start = merge_start_layer(depth)
        for layer in layers[:start]:
            hidden = layer(hidden, None)
        dest = merge_plan(hidden, kept_token_count(hidden.shape[1], self.keep))
        hidden, sizes = merge_tokens(hidden, dest)
        for layer in layers[start:]:
            hidden = layer(hidden, size_bias(sizes, hidden.dtype))
        states: list[torch.Tensor | None] = [None] * (total + 1)
        states[depth] = unmerge_tokens(hidden, dest)
        return SimpleNamespace(hidden_states=states)


@contextmanager
def merged_tower(model: nn.Module, keep: float) -> Iterator[None]:
    """Within the block, `model.vision_tower` (a transformers LLaVA model) merges at `keep`."""
    if keep >= 1.0:
        yield
        return
    tower = model.vision_tower
    feature_layer = model.config.vision_feature_layer
    if not isinstance(feature_layer, int):
        raise ValueError("encoder merging needs a single vision feature layer")
    model.vision_tower = _MergedTower(tower, keep, feature_layer)
    try:
        yield
    finally:
        model.vision_tower = tower
