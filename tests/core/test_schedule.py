"""Schedules (AIM §3.2): per-layer retention, presets, validation."""

import pytest

from aim_vllm.core.schedule import (
    PRESETS,
    AimSchedule,
    first_prune_layer,
    paper_prune_layers,
    preset_schedule,
)
from aim_vllm.core.token_counts import retention_at_layer, visual_kept_after_layer


def test_retention_matches_the_reference_rule() -> None:
    """Reference: max(0, 1 - (l - 14 + 1) * 0.125) from layer 14 on, 1 before (28 layers)."""
    for layer in range(28):
        expected = 1.0 if layer < 14 else max(0.0, 1 - (layer - 14 + 1) * 0.125)
        assert retention_at_layer(layer, 14, 22) == pytest.approx(expected)


def test_visual_tokens_per_layer_table() -> None:
    """1568 visual tokens (32 frames x 49), paper default: the table of kept counts."""
    kept = visual_kept_after_layer(1568, 28, (14, 22))
    assert kept[:14] == [1568] * 14
    assert kept[14:22] == [1372, 1176, 980, 784, 588, 392, 196, 0]
    assert kept[22:] == [0] * 6


def test_counts_are_exact_integer_floors() -> None:
    """int(N * r_l) without float drift, for awkward windows."""
    for n in (1, 7, 97, 1000):
        kept = visual_kept_after_layer(n, 10, (2, 9))
        for layer, k in enumerate(kept):
            assert k == int(n * max(0, min(7, 8 - layer)) / 7 + 1e-9)


def test_no_pruning_keeps_everything() -> None:
    assert visual_kept_after_layer(10, 4, None) == [10] * 4


def test_paper_layers() -> None:
    assert paper_prune_layers(28) == (14, 22)
    assert paper_prune_layers(32) == (13, 21)
    l1, l2 = paper_prune_layers(4)
    assert 0 <= l1 < l2 <= 4


@pytest.mark.parametrize("layers", [4, 24, 28, 32])
def test_presets_get_cheaper_in_order(layers: int) -> None:
    """off > light > balanced > max in kept visual tokens summed over layers."""
    totals = []
    for name in PRESETS:
        s = preset_schedule(name, layers)
        s.check_depth(layers)
        merged = round(1000 * s.merge_ratio)
        totals.append(sum(visual_kept_after_layer(merged, layers, s.prune_layers)))
    assert totals == sorted(totals, reverse=True)
    assert len(set(totals)) == len(totals)


def test_balanced_is_the_paper_default() -> None:
    assert preset_schedule("balanced", 28) == AimSchedule(0.25, (14, 22))
    assert preset_schedule("off", 28).is_off


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"merge_ratio": 0.0}, ValueError),
        ({"merge_ratio": 1.5}, ValueError),
        ({"merge_ratio": "0.5"}, TypeError),
        ({"merge_ratio": True}, TypeError),
        ({"prune_layers": (5, 5)}, ValueError),
        ({"prune_layers": (-1, 3)}, ValueError),
    ],
)
def test_invalid_schedules_are_refused(kwargs, error) -> None:
    with pytest.raises(error):
        AimSchedule(**kwargs)


def test_depth_check() -> None:
    with pytest.raises(ValueError, match="l2 <= 4"):
        AimSchedule(1.0, (2, 6)).check_depth(4)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        preset_schedule("fast", 28)


def test_first_prune_layer_is_the_deepstack_levels() -> None:
    """Qwen3-VL: rows may be dropped only after its DeepStack levels; 0 for other models."""
    qwen3 = {"vision_config": {"deepstack_visual_indexes": [8, 16, 24]}, "text_config": {}}
    assert first_prune_layer(qwen3) == 3
    assert first_prune_layer({"vision_config": {"depth": 32}}) == 0  # Qwen2.5-VL
    assert first_prune_layer({"vision_config": {"deepstack_visual_indexes": None}}) == 0
    assert first_prune_layer({"text_config": {"num_hidden_layers": 24}}) == 0
