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


# -- one decider: the scheduler's record travels with the step, the worker prunes exactly it -------


def _planned_step(req: RequestStep, record: PruneRecord, held_per_layer: list[int]) -> StepContext:
    return StepContext((req,), frozenset({"r"}), _step(held_per_layer).kv, {"r": record})


def test_the_worker_prunes_what_the_scheduler_planned_though_it_would_not() -> None:
    """Injected: the worker's own view says skip (a verdict it never got right), the scheduler
    planned pruning and allocated for it. The worker prunes the planned rows; no error."""
    planned = PruneRecord.planned(REQ, LAYERS)
    own_view = RequestStep("r", 120, REQ.schedule, REQ.visual_spans, 400, verdict="skipped: injected")
    step = _planned_step(own_view, planned, blocks_needed(planned.rows_per_layer, BLOCK))
    plan = PruningDecoder(LAYERS).plan(step, torch.tensor([0, 120]), torch.tensor([120]), NAMES)
    assert [record.pruned for _, record in plan.started] == [True]
    assert [int(rows[0]) for rows in plan.rows] == planned.rows_per_layer


def test_the_worker_skips_what_the_scheduler_did_not_plan_though_it_would_prune() -> None:
    """Injected the other way: the worker's own view would prune (the request as `REQ`), the
    scheduler planned it unpruned and allocated every token. The worker runs it whole; no error."""
    planned = PruneRecord.unpruned("skipped: injected", REQ, LAYERS)
    step = _planned_step(REQ, planned, [-(-120 // BLOCK)] * LAYERS)
    plan = PruningDecoder(LAYERS).plan(step, torch.tensor([0, 120]), torch.tensor([120]), NAMES)
    assert [(record.pruned, record.status) for _, record in plan.started] == [(False, "skipped: injected")]
    assert plan.rows == [] and plan.pruning == {}


def test_a_plan_for_a_step_the_prefill_does_not_fill_is_refused() -> None:
    """The scheduler decides from the step it schedules; a pruned plan for a split prefill could
    only be a bug, and is refused rather than run on rows it does not describe."""
    planned = PruneRecord.planned(REQ, LAYERS)
    step = _planned_step(REQ, planned, blocks_needed(planned.rows_per_layer, BLOCK))
    with pytest.raises(RuntimeError, match="does not fill"):
        PruningDecoder(LAYERS).plan(step, torch.tensor([0, 60]), torch.tensor([60]), NAMES)
