"""AIM's scheduler: vLLM's, with its AIM stage managers told about the requests (Design C).

Selected with `--scheduler-cls aim_vllm.kv.scheduler.AimScheduler` (`aim-vllm engine` passes it);
the AIM model then groups its KV cache per stage (`kv.spec`). Everything else is vLLM 0.32's
`Scheduler` unchanged; it is synchronous (vLLM turns async scheduling off for a subclass of it,
as the CPU engine always does).
"""

from __future__ import annotations

import logging
from typing import Any

from aim_vllm.compat import Scheduler
from aim_vllm.kv.manager import AimManager, KVPlans

logger = logging.getLogger(__name__)


class AimScheduler(Scheduler):
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
