"""Vision-encoder FLOPs, stock and with merging inside the tower (`core.encoder_merge`).

One ViT layer on n tokens attending in segments of lengths s (one per frame or crop; per window
or per frame in Qwen2.5-VL's ViT; per temporal slice in Qwen3-VL's), hidden d, MLP width d_ff,
h heads:

    2n(4d^2 + m*d*d_ff) + (4d + 5h) * sum(s^2) + 17dn

m = 2 for a plain MLP (SigLIP, CLIP, Qwen3-VL) and 3 for a gated one (Qwen2.5-VL). As in
`core.flops`, the terms are the projections, scores and weighted sum, softmax, and per-token
element-wise work.
Patch embedding and the projector after the tower (Qwen3-VL: its DeepStack mergers too) are not
counted (merging leaves them as they are), nor are the merging and copying back themselves.
Plain Python (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aim_vllm.core.token_counts import kept_token_count, merge_start_layer


def vit_layer_flops(
    n: float, hidden: int, mlp_width: int, heads: int, mlp_matrices: int, segments: Sequence[int] = ()
) -> float:
    """FLOPs of one ViT layer on n tokens attending within `segments` (none given: all n together)."""
    squares = sum(s * s for s in segments) if segments else n * n
    linear = 2 * n * (4 * hidden * hidden + mlp_matrices * hidden * mlp_width)
    return linear + (4 * hidden + 5 * heads) * squares + 17 * hidden * n


@dataclass(frozen=True)
class VisionShape:
    """A LLaVA-style tower (SigLIP or CLIP): every frame / crop alone through the same layers.

    `num_layers`: the layers that run (up to the feature layer the LLM takes); `tokens`: per frame or
    crop, `protected` of them never merged (CLIP's CLS).
    """

    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    tokens: int = 0
    protected: int = 0

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> VisionShape | None:
        """The tower of a LLaVA-style HF config (SigLIP or CLIP); None for other towers."""
        vision = config.get("vision_config") or {}
        layer = config.get("vision_feature_layer", -1)
        if vision.get("model_type") not in ("siglip_vision_model", "clip_vision_model") or not isinstance(
            layer, int
        ):
            return None
        is_clip = vision["model_type"] == "clip_vision_model"
        return cls(
            hidden_size=vision["hidden_size"],
            num_layers=layer % (vision["num_hidden_layers"] + 1),
            intermediate_size=vision["intermediate_size"],
            num_heads=vision["num_attention_heads"],
            tokens=(vision["image_size"] // vision["patch_size"]) ** 2 + is_clip,
            protected=int(is_clip),
        )

    def pass_flops(self, keep: float = 1.0) -> float:
        """FLOPs of one frame / crop through the tower, merged to `keep` from `merge_start_layer`."""
        kept = self.tokens if keep >= 1.0 else kept_token_count(self.tokens, keep, self.protected)
        return encoder_flops(self.tokens, self, merge_start_layer(self.num_layers), kept)


def vision_layer_flops(n: float, shape: VisionShape) -> float:
    """FLOPs of one SigLIP / CLIP layer on the n tokens of one frame or crop."""
    return vit_layer_flops(n, shape.hidden_size, shape.intermediate_size, shape.num_heads, 2)


def encoder_flops(num_tokens: int, shape: VisionShape, start: int = 0, kept: int | None = None) -> float:
    """FLOPs of one frame / crop through the encoder: `num_tokens` up to layer `start`, `kept` after."""
    kept = num_tokens if kept is None else kept
    return sum(vision_layer_flops(num_tokens if i < start else kept, shape) for i in range(shape.num_layers))


def encoder_flops_ratio(shape: VisionShape, keep: float) -> float:
    """Encoder FLOPs per frame / crop at `keep` over those of the stock tower."""
    return shape.pass_flops(keep) / shape.pass_flops()


@dataclass(frozen=True)
class WindowedVisionShape:
    """Qwen2.5-VL's ViT: attention inside windows of `window` x `window` patches, over each frame in
    the `full_attention` blocks; a gated MLP. Grids are (t, h, w) in patches (vLLM's `*_grid_thw`)."""

    hidden_size: int
    depth: int
    intermediate_size: int
    num_heads: int
    full_attention: tuple[int, ...]
    window: int  # patches per window side (window_size // patch_size)
    merge: int  # spatial_merge_size: windows are whole merge x merge units

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> WindowedVisionShape | None:
        """The ViT of a Qwen2.5-VL HF config; None for other towers."""
        vision = config.get("vision_config") or {}
        if "fullatt_block_indexes" not in vision or "window_size" not in vision:
            return None
        return cls(
            hidden_size=vision["hidden_size"],
            depth=vision["depth"],
            intermediate_size=vision["intermediate_size"],
            num_heads=vision["num_heads"],
            full_attention=tuple(vision["fullatt_block_indexes"]),
            window=vision["window_size"] // vision["patch_size"],
            merge=vision["spatial_merge_size"],
        )

    def window_lengths(self, height: int, width: int) -> list[int]:
        """Patches in each window of one frame of height x width patches, in the tower's order
        (vllm==0.32.0 `get_window_index_thw`: row-major windows, the last row / column partial)."""
        side, rows, cols = self.window // self.merge, height // self.merge, width // self.merge
        unit = self.merge * self.merge
        return [
            min(side, rows - r) * min(side, cols - c) * unit
            for r in range(0, rows, side)
            for c in range(0, cols, side)
        ]

    def item_flops(self, grid: Sequence[int], keep: float = 1.0) -> float:
        """FLOPs of one item (grid t, h, w) through the tower, merged per window to `keep` from
        `merge_start_layer` (`core.window_merge`)."""
        t, h, w = grid
        stock = self.window_lengths(h, w)
        merged = stock if keep >= 1.0 else [kept_token_count(length, keep) for length in stock]
        start = merge_start_layer(self.depth)
        total = 0.0
        for layer in range(self.depth):
            windows = stock if layer < start else merged
            frame = sum(windows)
            segments = [frame] * t if layer in self.full_attention else list(windows) * t
            total += vit_layer_flops(
                t * frame, self.hidden_size, self.intermediate_size, self.num_heads, 3, segments
            )
        return total


@dataclass(frozen=True)
class FrameVisionShape:
    """Qwen3-VL's ViT: every block attends over each temporal slice (h x w patches), a plain MLP.
    Grids are (t, h, w) in patches (vLLM's `*_grid_thw`)."""

    hidden_size: int
    depth: int
    intermediate_size: int
    num_heads: int

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> FrameVisionShape | None:
        """The ViT of a Qwen3-VL HF config (it names DeepStack taps); None for other towers."""
        vision = config.get("vision_config") or {}
        if "deepstack_visual_indexes" not in vision:
            return None
        return cls(vision["hidden_size"], vision["depth"], vision["intermediate_size"], vision["num_heads"])

    def item_flops(self, grid: Sequence[int], keep: float = 1.0) -> float:
        """FLOPs of one item (grid t, h, w) through the tower, each slice merged to `keep` from
        `merge_start_layer` (`models.qwen3_encoder_merging`)."""
        t, h, w = grid
        stock = h * w
        merged = stock if keep >= 1.0 else kept_token_count(stock, keep)
        start = merge_start_layer(self.depth)
        total = 0.0
        for layer in range(self.depth):
            frame = stock if layer < start else merged
            total += vit_layer_flops(
                t * frame, self.hidden_size, self.intermediate_size, self.num_heads, 2, [frame] * t
            )
        return total
