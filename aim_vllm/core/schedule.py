"""AIM schedules: how much to merge before the LLM and where to prune inside it (AIM §3, §4.1).

A schedule is data: a merge ratio (kept fraction of each frame's tokens) and optional pruning
layers (l1, l2) for `token_counts.retention_at_layer`. Presets scale with the model's depth; the
`balanced` preset is the paper's default (25% merge; l1=14, l2=22 for 28-layer Qwen2 LLMs,
l1=13, l2=21 for 32-layer LLaMA LLMs). Plain Python: the gateway imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aim_vllm.core.token_counts import visual_kept_after_layer

# AIM §4.1 implementation details: pruning layers of the paper's two LLM families.
_PAPER_PRUNE_LAYERS = {28: (14, 22), 32: (13, 21)}
# For other depths: the 28-layer setting as fractions of the depth.
_PAPER_L1_FRACTION, _PAPER_L2_FRACTION = 14 / 28, 22 / 28

PRESETS = ("off", "light", "balanced", "max")
# Token reduction before the LLM: AIM's merging, or the baselines of equal token counts
# ("evs": vLLM's EVS criterion, videos only; `core.baselines`).
MERGE_METHODS = ("aim", "pool", "random", "evs")
VIDEO_ONLY_METHODS = ("evs",)  # drop by change between frames: undefined for a single image
# Importance inside the LLM: AIM's PageRank, or FastV-style text-to-visual attention.
PRUNE_METHODS = ("pagerank", "fastv")


@dataclass(frozen=True)
class AimSchedule:
    """What AIM (or a baseline at the same token counts) does to one request.

    Attributes:
        merge_ratio: kept fraction of each frame's visual tokens, in (0, 1]; 1.0 = no merging.
        prune_layers: (l1, l2) with 0 <= l1 < l2, or None for no pruning.
        merge_method: "aim" (bipartite merging), "pool" (average pooling), "random" (seeded drop),
            "evs" (keep the tokens that change most from the previous frame; videos only).
        prune_method: "pagerank" (AIM) or "fastv" (attention the text gives each visual token).
        prune_keep: if set, prune once at l1 to this kept fraction (single-layer pruning, the
            FastV setting) instead of AIM's progressive ramp from l1 to l2.
        encoder_keep: kept fraction of each frame's / crop's tokens inside the vision encoder
            from `core.encoder_merge.merge_start_layer` on (merged, then copied back at its
            output; the project's extension, not AIM's); 1.0 = the encoder as it is.
    """

    merge_ratio: float = 1.0
    prune_layers: tuple[int, int] | None = None
    merge_method: str = "aim"
    prune_method: str = "pagerank"
    prune_keep: float | None = None
    encoder_keep: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.merge_ratio, bool) or not isinstance(self.merge_ratio, int | float):
            raise TypeError(f"merge_ratio must be a number, got {type(self.merge_ratio).__name__}")
        if not 0.0 < self.merge_ratio <= 1.0:
            raise ValueError(f"merge_ratio must be in (0, 1], got {self.merge_ratio}")
        if self.prune_layers is not None:
            l1, l2 = self.prune_layers
            if not (isinstance(l1, int) and isinstance(l2, int) and 0 <= l1 < l2):
                raise ValueError(f"prune_layers must be integers 0 <= l1 < l2, got {self.prune_layers}")
        if self.merge_method not in MERGE_METHODS:
            raise ValueError(
                f"merge_method must be one of {', '.join(MERGE_METHODS)}, got {self.merge_method!r}"
            )
        if self.prune_method not in PRUNE_METHODS:
            raise ValueError(
                f"prune_method must be one of {', '.join(PRUNE_METHODS)}, got {self.prune_method!r}"
            )
        if self.prune_keep is not None and (self.prune_layers is None or not 0.0 <= self.prune_keep <= 1.0):
            raise ValueError(f"prune_keep needs prune_layers and must be in [0, 1], got {self.prune_keep}")
        if isinstance(self.encoder_keep, bool) or not isinstance(self.encoder_keep, int | float):
            raise TypeError(f"encoder_keep must be a number, got {type(self.encoder_keep).__name__}")
        if not 0.0 < self.encoder_keep <= 1.0:
            raise ValueError(f"encoder_keep must be in (0, 1], got {self.encoder_keep}")

    def visual_kept(self, num_visual: int, num_layers: int) -> list[int]:
        """Visual tokens leaving each layer for `num_visual` visual tokens entering the LLM."""
        return visual_kept_after_layer(num_visual, num_layers, self.prune_layers, self.prune_keep)

    @property
    def merges(self) -> bool:
        return self.merge_ratio < 1.0

    @property
    def prunes(self) -> bool:
        return self.prune_layers is not None

    @property
    def merges_in_encoder(self) -> bool:
        return self.encoder_keep < 1.0

    @property
    def is_off(self) -> bool:
        return not (self.merges or self.prunes or self.merges_in_encoder)

    def check_depth(self, num_layers: int) -> None:
        """Raise ValueError when the pruning layers do not fit a model of `num_layers` layers."""
        if self.prune_layers is not None and self.prune_layers[1] > num_layers:
            raise ValueError(
                f"prune_layers {self.prune_layers} need l2 <= {num_layers}, the model's layer count"
            )


OFF = AimSchedule()


def paper_prune_layers(num_layers: int) -> tuple[int, int]:
    """The paper's (l1, l2) for this depth (exact for 28 and 32 layers, scaled otherwise)."""
    if num_layers in _PAPER_PRUNE_LAYERS:
        return _PAPER_PRUNE_LAYERS[num_layers]
    l1 = min(num_layers - 1, round(num_layers * _PAPER_L1_FRACTION))
    return l1, max(l1 + 1, round(num_layers * _PAPER_L2_FRACTION))


def preset_schedule(name: str, num_layers: int) -> AimSchedule:
    """Schedule of a named preset for a model with `num_layers` decoder layers.

    - off: plain inference.
    - light: merge to 50%, prune only over the last layers (from the paper's l2 to the end).
    - balanced: the paper's default, 25% merge + paper pruning layers.
    - max: merge to 12.5%, prune from a quarter to half of the depth.
    """
    l1, l2 = paper_prune_layers(num_layers)
    if name == "off":
        return OFF
    if name == "light":
        return AimSchedule(0.5, (min(l2, num_layers - 1), num_layers))
    if name == "balanced":
        return AimSchedule(0.25, (l1, l2))
    if name == "max":
        quarter = max(0, num_layers // 4)
        return AimSchedule(0.125, (quarter, max(quarter + 1, num_layers // 2)))
    raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")


def first_prune_layer(config: Mapping[str, Any]) -> int:
    """L, the first LLM layer after which rows may be dropped, from a checkpoint's `config.json`:
    a Qwen3-VL's DeepStack levels (`vision_config.deepstack_visual_indexes`, added to the visual
    rows after layers 0..L-1), 0 for every other model."""
    vision = config.get("vision_config") or {}
    return len(vision.get("deepstack_visual_indexes") or ())
