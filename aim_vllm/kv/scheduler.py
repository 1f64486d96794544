"""AIM's scheduler: vLLM's own, deciding per request what pruning needs (vllm==0.32.0 `Scheduler`).

Selected with `--scheduler-cls aim_vllm.kv.scheduler.AimScheduler` (`aim-vllm engine` passes it).
Prefix caching and chunked prefill stay on for every request; only a request that prunes is
treated apart, because AIM ranks its visual tokens with every prompt row in one forward and
compacts its KV per layer:
1. verdict (`pruning.state.scheduler_verdict`), when the request arrives: `WHOLE` or why it
   cannot prune; it travels to the worker in the request's `SamplingParams.extra_args`, so the
   worker prunes exactly what the scheduler planned for (one decider), with a copy of the items'
   AIM parameters (vLLM strips the data of items a prefix cache hit covers);
2. a `WHOLE` request never reads the prefix cache (`Request.skip_reading_prefix_cache`, as vLLM
   does for prompt logprobs) and never caches its blocks (their pruned layers hold other tokens
   than their hashes name): its coordinator's `cache_blocks` passes it by;
3. its prefill is never split: a step that would cut it defers it (`_reserve_prefill_lookahead`
   returns 0), and when it heads the queue and does not fit the step budget
   (`--max-num-scheduled-tokens`, vLLM's chunk), that one step may hold up to
   `--max-num-batched-tokens` tokens. Every other request is chunked and cached as in stock vLLM;
4. Design C: the AIM stage managers (`kv.manager`) allocate what each layer group keeps, from the
   record the scheduler decides when the request's prefill starts;
5. one decider: that record travels to the workers with the step that starts the prefill
   (`SchedulerOutput.aim_prefill_records`, pickled with the output), and the workers prune
   exactly it (`pruning.decoder`), so the blocks a layer holds always fit what it stores.
The asynchronous variant is built when the engine schedules asynchronously (vLLM's default on
GPUs; the CPU platform turns it off): vLLM builds whatever class `--scheduler-cls` names, and a
subclass of the synchronous `Scheduler` under an asynchronous engine would wait for every step.
"""

from __future__ import annotations

import logging
from typing import Any

from aim_vllm.compat import AsyncScheduler, Scheduler
from aim_vllm.kv.manager import AimManager, KVPlans
from aim_vllm.pruning.runner_context import item_values, request_step
from aim_vllm.pruning.state import ITEMS_KEY, PREFILL_KEY, RECORDS_ATTR, WHOLE, scheduler_verdict
from aim_vllm.pruning.support import engine_reason

logger = logging.getLogger(__name__)


def keeps_whole(request: Any) -> bool:
    """Whether AIM's verdict on `request` (a vLLM `Request`) is `WHOLE`."""
    params = request.sampling_params
    return params is not None and (params.extra_args or {}).get(PREFILL_KEY) == WHOLE


class AimScheduler(Scheduler):
    def __new__(cls, *args: Any, **kwargs: Any) -> AimScheduler:
        """The asynchronous variant when the engine schedules asynchronously (vLLM passes
        `vllm_config` by keyword: `EngineCore.__init__`)."""
        config = kwargs.get("vllm_config")
        if cls is AimScheduler and config is not None and config.scheduler_config.async_scheduling:
            cls = AimAsyncScheduler
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aim_engine_reason = engine_reason(self.vllm_config, aim_scheduler=True)  # no verdicts then
        self.aim_kv_plans = KVPlans(self.requests)
        managers = [
            m for m in self.kv_cache_manager.coordinator.single_type_managers if isinstance(m, AimManager)
        ]
        for manager in managers:
            manager.plans = self.aim_kv_plans
        if managers:
            logger.info("aim-vllm: %d KV-cache groups allocate per AIM stage", len(managers))
        coordinator = self.kv_cache_manager.coordinator
        cache_blocks = coordinator.cache_blocks

        def cache_unless_whole(request: Any, num_computed_tokens: int) -> None:
            if not keeps_whole(request):
                cache_blocks(request, num_computed_tokens)

        coordinator.cache_blocks = cache_unless_whole  # this scheduler's own coordinator only

    def add_request(self, request: Any) -> None:
        if request.request_id not in self.requests:
            self._aim_judge(request)
        super().add_request(request)

    def _aim_judge(self, request: Any) -> None:
        """Write AIM's verdict into a new request that asks to prune (module docstring, 1-2), and a
        copy of its items' AIM parameters into every request that has them: the worker then knows
        them when a prefix cache hit covers an item (vLLM sends no data for it)."""
        params = request.sampling_params
        if params is None:
            return
        items = item_values(request.mm_features)
        if any(items):
            params.extra_args = {**(params.extra_args or {}), ITEMS_KEY: items}
        if self.aim_engine_reason:
            return
        step = request_step(request.request_id, request.num_prompt_tokens, request.mm_features, params)
        max_tokens = request.max_tokens or self.max_model_len
        longest = min(request.num_prompt_tokens + max_tokens, self.max_model_len)
        budget = self.scheduler_config.max_num_batched_tokens
        threshold = self.scheduler_config.long_prefill_token_threshold
        verdict = scheduler_verdict(step, longest, min(budget, threshold) if threshold else budget)
        if verdict is None:
            return
        params.extra_args = {**(params.extra_args or {}), PREFILL_KEY: verdict}
        if verdict == WHOLE:
            request.skip_reading_prefix_cache = True

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        budget = self.max_num_scheduled_tokens
        if self._aim_head_needs_room(budget):
            self.max_num_scheduled_tokens = self.scheduler_config.max_num_batched_tokens
        try:
            output = super().schedule(*args, **kwargs)
        finally:
            self.max_num_scheduled_tokens = budget
        self._aim_send_records(output)
        return output

    def _aim_send_records(self, output: Any) -> None:
        """Attach the record of every prefill this step starts (module docstring, 5)."""
        starting = [new.req_id for new in output.scheduled_new_reqs]
        starting += sorted(output.scheduled_cached_reqs.resumed_req_ids)  # recomputed after preemption
        records = {rid: record for rid in starting if (record := self.aim_kv_plans.record(rid)) is not None}
        setattr(output, RECORDS_ATTR, records)

    def _aim_head_needs_room(self, budget: int) -> bool:
        """Whether the next waiting request is a `WHOLE` prefill that this step's chunk budget,
        less a token for each running request, cannot hold."""
        queue = self.kv_holding_waiting or self.waiting
        if not queue:
            return False
        head = queue.peek_request()
        if not keeps_whole(head) or head.num_computed_tokens:
            return False
        return head.num_tokens + len(self.running) > budget

    def _reserve_prefill_lookahead(self, request: Any, num_computed_tokens: int, num_new_tokens: int) -> int:
        """vLLM's last say on a request's tokens this step; 0 defers a `WHOLE` prefill it would cut."""
        num_new_tokens = super()._reserve_prefill_lookahead(request, num_computed_tokens, num_new_tokens)
        cut = num_computed_tokens + num_new_tokens < request.num_tokens
        if num_new_tokens and cut and keeps_whole(request):
            return 0
        return num_new_tokens


class AimAsyncScheduler(AimScheduler, AsyncScheduler):
    """`AimScheduler` over vLLM's `AsyncScheduler` (output placeholders, one step ahead)."""
