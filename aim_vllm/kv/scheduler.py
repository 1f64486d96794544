"""AIM's scheduler: vLLM's, with its AIM stage managers told about the requests (Design C).

Selected with `--scheduler-cls aim_vllm.kv.scheduler.AimScheduler` (`aim-vllm engine` passes it);
the AIM model then groups its KV cache per stage (`kv.spec`). Everything else is vLLM 0.32's
scheduler unchanged: `Scheduler`, or `AsyncScheduler` when the engine schedules asynchronously
(vLLM's default on GPUs; the CPU platform turns it off). vLLM builds whatever class
`--scheduler-cls` names without looking at async scheduling, and a subclass of the synchronous
`Scheduler` under an asynchronous engine waits for every step's output before scheduling the
next: `AimScheduler(...)` therefore builds an `AimAsyncScheduler` when the engine is asynchronous.
"""

from __future__ import annotations

import logging
from typing import Any

from aim_vllm.compat import AsyncScheduler, Scheduler
from aim_vllm.kv.manager import AimManager, KVPlans

logger = logging.getLogger(__name__)


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
        self.aim_kv_plans = KVPlans(self.requests)
        managers = [
            m for m in self.kv_cache_manager.coordinator.single_type_managers if isinstance(m, AimManager)
        ]
        for manager in managers:
            manager.plans = self.aim_kv_plans
        if managers:
            logger.info("aim-vllm: %d KV-cache groups allocate per AIM stage", len(managers))


class AimAsyncScheduler(AimScheduler, AsyncScheduler):
    """`AimScheduler` over vLLM's `AsyncScheduler` (output placeholders, one step ahead)."""
