"""The spread-positions ablation (`patches.SPREAD_POSITIONS_ENV`): with it, the runner patch leaves
vLLM's recompute of M-RoPE positions off, so merged Qwen2.5-VL tokens keep the count-based
positions set when a request is added; without it (the default) the recompute is on."""

from __future__ import annotations

import pytest

from aim_vllm.models.qwen2_5_vl import AimQwen2_5_VLForConditionalGeneration
from aim_vllm.patches import SPREAD_POSITIONS_ENV, _with_positions_after_encoder


class _Runner:
    uses_mrope = True
    is_multimodal_pruning_enabled = False

    def __init__(self, model):
        self.model = model

    def get_model(self):
        return self.model


def _load(monkeypatch, value: str | None) -> _Runner:
    if value is None:
        monkeypatch.delenv(SPREAD_POSITIONS_ENV, raising=False)
    else:
        monkeypatch.setenv(SPREAD_POSITIONS_ENV, value)
    runner = _Runner(object.__new__(AimQwen2_5_VLForConditionalGeneration))
    _with_positions_after_encoder(lambda self: None)(runner)
    return runner


def test_spread_positions_keep_the_recompute_off(monkeypatch) -> None:
    runner = _load(monkeypatch, "1")
    assert not runner.is_multimodal_pruning_enabled
    assert not runner.model.aim_positions_after_encoder  # the model appends no position channels


@pytest.mark.parametrize("value", [None, "", "0"])
def test_content_aware_positions_are_the_default(monkeypatch, value: str | None) -> None:
    runner = _load(monkeypatch, value)
    assert runner.is_multimodal_pruning_enabled and runner.model.aim_positions_after_encoder
