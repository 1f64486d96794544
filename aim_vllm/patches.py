"""Every change aim-vllm makes to vLLM objects it does not own, applied from `plugin.register_all`.

Ledger (vllm==0.32.0):
1. `GPUModelRunner._model_forward` and `GPUModelRunner.execute_model` (V1 runner;
   `CPUModelRunner` inherits both).
   Why: the decoder forward needs, per request of the batch, its pruning schedule and visual
   spans, and the pruning records AIM's scheduler decided for the prefills this step starts
   (`SchedulerOutput.aim_prefill_records`); vLLM passes no request information to
   `model.forward`, and keeps no reference to the step's `SchedulerOutput`. And a tensor-parallel rank
   whose forward raises leaves the other ranks waiting in a collective forever (vLLM's
   `WorkerProc` logs the exception of a non-output rank and carries on).
   How: for models that set `aim_accepts_step = True` only, a wrapper adds the keyword
   `aim_step` (`pruning.state.StepContext`); dummy/profile runs call the model directly and get
   none; `execute_model` keeps the step's records on the runner (`aim_prefill_records`, an
   empty dict when the scheduler is not AIM's) for it. If the forward raises in an engine of
   several ranks, the worker exits, so vLLM's executor sees a dead worker and shuts the engine
   down at once (requests fail instead of hang).
   Remove when: vLLM passes request metadata to models (Model Runner V2's `ModelState` does;
   `models/model_state.py`) and fails an engine whose rank raised.
2. The `cache_blocks` of the KV-cache coordinator that AIM's scheduler owns (an instance attribute,
   set in `kv.scheduler.AimScheduler.__init__`; no class is changed).
   Why: a pruned request's blocks hold compacted layers, not the tokens their hashes name; no
   other request may ever hit them. vLLM caches every request's full blocks.
   How: requests with AIM's `WHOLE` verdict are passed by; every other request is cached as before.
   Remove when: vLLM lets a request opt out of writing the prefix cache (it has
   `skip_reading_prefix_cache` for reading only).
3. `load_model` of `GPUModelRunner` and `CPUModelRunner` (V1 runners; the CPU one does not call
   its parent's).
   Why: Qwen2.5-VL M-RoPE positions of merged tokens follow the merge plan, known only after the
   encoder. vLLM recomputes positions after the encoder for EVS only, behind the runner's
   `is_multimodal_pruning_enabled`, which the GPU runner sets from `--video-pruning-rate` and the
   CPU runner never sets.
   How: for models with `aim_positions_after_encoder` only, after loading, the runner's flag is set
   as the GPU runner sets it for EVS, and the model is told so (it then appends its position
   channels, `models/qwen2_5_vl.py`); without it the model keeps count-based positions. Other
   models, and AIM-off requests (embeddings without channels pass through), are unchanged.
   Ablation: `AIM_VLLM_SPREAD_POSITIONS=1` in the engine's environment skips this item, so merged
   tokens keep the count-based "spread" positions (`core.merge.spread_indices`) that are set when
   a request is added: the baseline the content-aware positions are measured against
   (docs/accuracy.md, "Qwen2.5-VL: positions of merged tokens"). Not for serving.
   Remove when: vLLM lets a model recompute positions after its encoder without EVS.
AIM's scheduler also overrides two of `Scheduler`'s own methods (`schedule`, to give a pruning
prefill one step of up to --max-num-batched-tokens; `_reserve_prefill_lookahead`, vLLM's last say
on a request's tokens in a step, to defer rather than split it): private vLLM API, pinned with
the rest by `plugin.SUPPORTED_VLLM` and covered by `tests/kv/test_scheduler.py`.
Attention backends are not patched: the AIM model wraps its own layers' backends
(`attention/backends.py`), so other models in the process see vLLM's backends unchanged.
KV memory (Design C) patches nothing either: the AIM model's own layers report a stage spec
(`kv/spec.py`), registered through vLLM's `KVCacheSpecRegistry` with its manager, and the
scheduler is chosen by `--scheduler-cls` (`kv/scheduler.py`); other models keep vLLM's specs.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_PATCHED_ATTR = "_aim_vllm_patched"
# "1": merged Qwen2.5-VL tokens keep count-based positions (an ablation; ledger item 3).
SPREAD_POSITIONS_ENV = "AIM_VLLM_SPREAD_POSITIONS"


def patch_method(owner: type, name: str, make_wrapper: Callable[[Callable], Callable]) -> None:
    """Replace `owner.name` by `make_wrapper(original)`; refuses to patch twice."""
    original = getattr(owner, name)
    if getattr(original, _PATCHED_ATTR, False):
        return
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, _PATCHED_ATTR, True)
    setattr(owner, name, wrapper)
    logger.debug("aim-vllm: patched %s.%s", owner.__qualname__, name)


def apply_all() -> None:
    """Apply the ledger's patches (idempotent)."""
    from aim_vllm.compat import CPUModelRunner, GPUModelRunner

    patch_method(GPUModelRunner, "_model_forward", _with_step_context)
    patch_method(GPUModelRunner, "execute_model", _keeping_prefill_records)
    for runner in (GPUModelRunner, CPUModelRunner):
        patch_method(runner, "load_model", _with_positions_after_encoder)


def _with_step_context(original: Callable) -> Callable:
    def _model_forward(self, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self.get_model(), "aim_accepts_step", False):
            return original(self, *args, **kwargs)
        from aim_vllm.pruning.runner_context import build_step_context, exit_if_peers_would_hang

        kwargs["aim_step"] = build_step_context(self)
        try:
            return original(self, *args, **kwargs)
        except Exception:
            exit_if_peers_would_hang(self.vllm_config)
            raise

    return _model_forward


def _keeping_prefill_records(original: Callable) -> Callable:
    from aim_vllm.pruning.state import RECORDS_ATTR

    def execute_model(self, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        self.aim_prefill_records = getattr(scheduler_output, RECORDS_ATTR, None) or {}
        return original(self, scheduler_output, *args, **kwargs)

    return execute_model


def _with_positions_after_encoder(original: Callable) -> Callable:
    def load_model(self, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        model = self.get_model()
        if not hasattr(model, "aim_positions_after_encoder") or not self.uses_mrope:
            return result
        if os.environ.get(SPREAD_POSITIONS_ENV) == "1":
            logger.warning("aim-vllm: %s=1: merged tokens keep count-based positions", SPREAD_POSITIONS_ENV)
        else:
            self.is_multimodal_pruning_enabled = True  # as GPUModelRunner.load_model does for EVS
            model.aim_positions_after_encoder = True
        return result

    return load_model
