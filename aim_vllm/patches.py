"""Every change aim-vllm makes to vLLM objects it does not own, applied from `plugin.register_all`.

Ledger (vllm==0.32.0):
1. `GPUModelRunner._model_forward` (V1 runner; `CPUModelRunner` inherits it).
   Why: the decoder forward needs, per request of the batch, its pruning schedule and visual
   spans; vLLM passes no request information to `model.forward`.
   How: a wrapper adds the keyword `aim_step` (`pruning.state.StepContext`) for models that set
   `aim_accepts_step = True`; dummy/profile runs call the model directly and get none.
   Remove when: vLLM passes request metadata to models (Model Runner V2's `ModelState` does;
   port there when the GPU path moves to V2).
2. `AttentionBackendEnum.CPU_ATTN` class path -> `aim_vllm.attention.cpu.AimCPUAttentionBackend`
   through vLLM's public `register_backend` (same kernels; metadata remembers its inputs).
   Remove when: per-layer metadata can be requested from vLLM for a subset of rows.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_PATCHED_ATTR = "_aim_vllm_patched"


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
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    register_backend(AttentionBackendEnum.CPU_ATTN, "aim_vllm.attention.cpu.AimCPUAttentionBackend")
    patch_method(GPUModelRunner, "_model_forward", _with_step_context)


def _with_step_context(original: Callable) -> Callable:
    def _model_forward(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self.get_model(), "aim_accepts_step", False):
            from aim_vllm.pruning.runner_context import build_step_context

            kwargs["aim_step"] = build_step_context(self)
        return original(self, *args, **kwargs)

    return _model_forward
