"""The block manager of one AIM stage: a pruned request gets only the blocks its layers keep
(Design C; vllm==0.32.0 `SingleTypeKVCacheManager`).

vLLM's coordinator asks every group's manager for the same `num_tokens` (the request's whole
sequence so far). `AimManager` asks its pool for `num_tokens - missing`, where `missing` is what
the stage's fullest layer lacks (`kv.plan.group_missing`). Admission, preemption and the free-
block count all go through these two methods, so the scheduler admits by the smaller footprint.
Managers see request ids only; `KVPlans` (bound by `kv.scheduler.AimScheduler`) looks the request
up and decides, as the worker does, from its prompt, visual spans and AIM parameters. Unbound (a
scheduler that is not AIM's) or unsure (no AIM parameters in the engine core): every token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aim_vllm.compat import FullAttentionManager
from aim_vllm.kv.plan import group_missing, prefill_record
from aim_vllm.pruning.runner_context import request_step
from aim_vllm.pruning.state import PruneRecord


class KVPlans:
    """Per request: its prefill's `PruneRecord` (what each layer's KV lacks), decided when its
    prefill starts (nothing cached yet: new, or recomputed after preemption) and kept until it is
    freed. The record travels to the workers with the step (`kv.scheduler`, one decider)."""

    def __init__(self, requests: Mapping[str, Any]) -> None:
        self.requests = requests  # the scheduler's request id -> vLLM `Request`
        self._records: dict[str, tuple[tuple[int, int], PruneRecord]] = {}

    def decide(self, request_id: str, computed: int, scheduled: int, num_layers: int) -> None:
        """Record what a step that computes `scheduled` tokens after `computed` cached ones prunes."""
        request = self.requests.get(request_id)
        if request is None or request.num_computed_tokens != 0:
            return  # decided at its prefill (or unknown: `missing` then says 0)
        key = (computed, scheduled)
        if self._records.get(request_id, (None,))[0] == key:
            return
        step = request_step(
            request_id, request.num_prompt_tokens, request.mm_features, request.sampling_params
        )
        self._records[request_id] = (key, prefill_record(step, computed, scheduled, num_layers))

    def record(self, request_id: str) -> PruneRecord | None:
        """The request's latest prefill record (None: not decided here)."""
        entry = self._records.get(request_id)
        return entry[1] if entry else None

    def missing(self, request_id: str, layers: tuple[int, int]) -> int:
        entry = self._records.get(request_id)
        return group_missing(entry[1].missing, layers) if entry else 0

    def drop(self, request_id: str) -> None:
        self._records.pop(request_id, None)


class AimManager(FullAttentionManager):
    """`FullAttentionManager` for the layers of one stage (`kv.spec.AimStageSpec`)."""

    plans: KVPlans | None = None  # set by AimScheduler

    def _missing(self, request_id: str) -> int:
        return 0 if self.plans is None else self.plans.missing(request_id, self.kv_cache_spec.aim_layers)

    def get_num_blocks_to_allocate(
        self,
        request_id: str,
        num_tokens: int,
        new_computed_blocks: Any,
        total_computed_tokens: int,
        num_local_computed_tokens: int,
        num_tokens_main_model: int,
        *args: Any,
        **kwargs: Any,
    ) -> int:
        # called before every allocation: the place a (re)started prefill is decided
        if self.plans is not None:
            scheduled = num_tokens_main_model - total_computed_tokens
            self.plans.decide(request_id, total_computed_tokens, scheduled, self.kv_cache_spec.aim_num_layers)
        m = self._missing(request_id)
        return super().get_num_blocks_to_allocate(
            request_id,
            num_tokens - m,
            new_computed_blocks,
            total_computed_tokens,
            num_local_computed_tokens,
            num_tokens_main_model - m,
            *args,
            **kwargs,
        )

    def allocate_new_blocks(self, request_id: str, num_tokens: int, num_tokens_main_model: int) -> list:
        m = self._missing(request_id)
        return super().allocate_new_blocks(request_id, num_tokens - m, num_tokens_main_model - m)

    def pop_blocks_for_free(self, request_id: str) -> list:
        if self.plans is not None:
            self.plans.drop(request_id)
        return super().pop_blocks_for_free(request_id)
