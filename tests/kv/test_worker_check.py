"""The worker checks every step that each layer's KV blocks hold what the layer stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aim_vllm.core.schedule import AimSchedule
from aim_vllm.kv.plan import blocks_needed
from aim_vllm.pruning.decoder import PruningDecoder
from aim_vllm.pruning.state import KVBlocks, PruneRecord, RequestStep, StepContext

LAYERS, BLOCK = 4, 16
NAMES = tuple(f"layer.{i}" for i in range(LAYERS))
REQ = RequestStep("r", 120, AimSchedule(0.5, (1, 3)), ((10, 100),), 400)


def _step(held_per_layer: list[int]) -> StepContext:
    kv = KVBlocks(
        {name: i for i, name in enumerate(NAMES)},
        (BLOCK,) * LAYERS,
        tuple(np.array([h]) for h in held_per_layer),
    )
    return StepContext((REQ,), frozenset({"r"}), kv)


def _plan(held_per_layer: list[int]):
    return PruningDecoder(LAYERS).plan(
        _step(held_per_layer), torch.tensor([0, 120]), torch.tensor([120]), NAMES
    )


def test_blocks_for_what_each_layer_keeps_pass_and_are_reported() -> None:
    needed = blocks_needed(PruneRecord.planned(REQ, LAYERS).rows_per_layer, BLOCK)
    plan = _plan(needed)
    assert plan.kv_held == {"r": (120, needed)} and plan.kv_block_size == BLOCK


def test_a_layer_short_of_blocks_fails_loudly() -> None:
    """E.g. the scheduler pruned a request the worker does not: never write to the null block."""
    needed = blocks_needed(PruneRecord.planned(REQ, LAYERS).rows_per_layer, BLOCK)
    needed[1] -= 1
    with pytest.raises(RuntimeError, match="layer 1"):
        _plan(needed)
    unpruned = RequestStep("r", 120)  # no AIM parameters: every layer stores all 120 tokens
    step = StepContext((unpruned,), frozenset({"r"}), _step([8, 8, 8, 7]).kv)
    with pytest.raises(RuntimeError, match="disagree"):
        PruningDecoder(LAYERS).plan(step, torch.tensor([0, 120]), torch.tensor([120]), NAMES)


def test_a_recomputed_prefill_is_counted() -> None:
    """After a preemption the request's prefill starts again (nothing computed): decided again, and
    its record says it is the second prefill (`usage.aim.prefills`)."""
    needed = blocks_needed(PruneRecord.planned(REQ, LAYERS).rows_per_layer, BLOCK)
    decoder = PruningDecoder(LAYERS)
    for expected in (1, 2):
        plan = decoder.plan(_step(needed), torch.tensor([0, 120]), torch.tensor([120]), NAMES)
        assert [record.prefills for _, record in plan.started] == [expected]
    decoder.plan(_step(needed), torch.tensor([0, 1]), torch.tensor([121]), NAMES)  # a decode step
    assert decoder.records["r"].prefills == 2 and decoder.records["r"].pruned
