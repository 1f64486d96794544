"""AIM schedules: how much to merge before the LLM and where to prune inside it (AIM §3, §4.1).

A schedule is data: a merge ratio (kept fraction of each frame's tokens) and optional pruning
layers (l1, l2) for `token_counts.retention_at_layer`. Presets scale with the model's depth; the
`balanced` preset is the paper's default (25% merge; l1=14, l2=22 for 28-layer Qwen2 LLMs,
l1=13, l2=21 for 32-layer LLaMA LLMs). Plain Python: the gateway imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

# AIM §4.1 implementation details: pruning layers of the paper's two LLM families.
_PAPER_PRUNE_LAYERS = {28: (14, 22), 32: (13, 21)}
# For other depths: the 28-layer setting as fractions of the depth.
_PAPER_L1_FRACTION, _PAPER_L2_FRACTION = 14 / 28, 22 / 28

PRESETS = ("off", "light", "balanced", "max")


@dataclass(frozen=True)
class AimSchedule:
    """What AIM does to one request.

    Attributes:
        merge_ratio: kept fraction of each frame's visual tokens, in (0, 1]; 1.0 = no merging.
        prune_layers: (l1, l2) with 0 <= l1 < l2, or None for no pruning.
    """

    merge_ratio: float = 1.0
    prune_layers: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.merge_ratio, bool) or not isinstance(self.merge_ratio, int | float):
            raise TypeError(f"merge_ratio must be a number, got {type(self.merge_ratio).__name__}")
        if not 0.0 < self.merge_ratio <= 1.0:
            raise ValueError(f"merge_ratio must be in (0, 1], got {self.merge_ratio}")
        if self.prune_layers is not None:
            l1, l2 = self.prune_layers
            if not (isinstance(l1, int) and isinstance(l2, int) and 0 <= l1 < l2):
                raise ValueError(f"prune_layers must be integers 0 <= l1 < l2, got {self.prune_layers}")

    @property
    def merges(self) -> bool:
        return self.merge_ratio < 1.0

    @property
    def prunes(self) -> bool:
        return self.prune_layers is not None

    @property
    def is_off(self) -> bool:
        return not (self.merges or self.prunes)

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
