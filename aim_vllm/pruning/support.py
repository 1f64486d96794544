"""Whether an engine can prune, decided once when the AIM model is built (vllm==0.32.0 `VllmConfig`).

`prepare_engine` returns '' when it can, else the reason: every request that asks for pruning
then runs unpruned and reports `usage.aim.pruning = "skipped: <reason>"`; merging is unaffected.
The reason is logged once at start-up. Checks, in order:
1. engine settings pruning cannot be exact under: prefix caching or chunked prefill without AIM's
   scheduler (which keeps a pruned prefill whole and out of the cache, `kv.scheduler`),
   speculative decoding, pipeline parallelism, full CUDA graphs (they replay attention with the
   metadata they captured; piecewise graphs and torch.compile leave attention to run eagerly
   between pieces, where each layer reads the metadata AIM installs, so they stay on);
2. the model runner: the V1 runner (the CPU engine's; `aim-vllm engine` selects it on CUDA) is the
   one pruning is tested on; Model Runner V2 passes the step through `models/model_state.py` but
   pruning stays off there until it has run on a GPU;
3. the attention backend: its builder must rebuild metadata for compacted sequences
   (`attention.backends.install_compaction`, which then wraps the layers' backends).
"""

from __future__ import annotations

import logging
from typing import Any

from aim_vllm.attention.backends import install_compaction

logger = logging.getLogger(__name__)

USE_V1_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"  # "0" selects the V1 runner


AIM_SCHEDULER = "aim_vllm.kv.scheduler.AimScheduler"


def uses_aim_scheduler(vllm_config: Any) -> bool:
    """Whether the engine core schedules with AIM's scheduler (`--scheduler-cls`)."""
    from aim_vllm.kv.scheduler import AimScheduler

    scheduler = vllm_config.scheduler_config
    cls = scheduler.get_scheduler_cls() if scheduler.scheduler_cls is not None else None
    return isinstance(cls, type) and issubclass(cls, AimScheduler)


def engine_reason(vllm_config: Any, aim_scheduler: bool | None = None) -> str:
    """Why the engine's settings rule pruning out ('' when they do not); `aim_scheduler`: whether
    AIM's scheduler runs (None: read from the config)."""
    if aim_scheduler is None:
        aim_scheduler = uses_aim_scheduler(vllm_config)
    if vllm_config.cache_config.enable_prefix_caching and not aim_scheduler:
        return (
            "prefix caching is enabled and the scheduler is not AIM's (pruned KV must never be "
            f"reused); use --scheduler-cls {AIM_SCHEDULER} or --no-enable-prefix-caching"
        )
    if vllm_config.speculative_config is not None:
        return "speculative decoding needs every row of every layer"
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        return "pipeline parallelism is not supported with pruning"
    if vllm_config.compilation_config.cudagraph_mode.has_full_cudagraphs():
        return (
            "full CUDA graphs replay attention with the metadata they captured; use "
            "-cc.cudagraph_mode=PIECEWISE (aim-vllm engine's default on CUDA) or --enforce-eager"
        )
    if vllm_config.use_v2_model_runner:
        return f"Model Runner V2 is not supported yet; set {USE_V1_RUNNER_ENV}=0 (aim-vllm engine does)"
    return ""


def prepare_engine(vllm_config: Any, attention_layers: list[Any], announce: bool = True) -> str:
    """'' when pruning can run (the layers' backends are then wrapped), else the reason (logged)."""
    reason = engine_reason(vllm_config) or install_compaction(attention_layers)
    if reason and announce:
        logger.warning("aim-vllm: pruning is off in this engine (merging still works): %s", reason)
    return reason
