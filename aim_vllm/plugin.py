"""Plugin registration, run by vLLM in every process (API server, engine core, workers).

`register_all` registers lazy "module:Class" strings over vLLM's stock architectures (no heavy
import, nothing CUDA-related happens here) and applies the runner patches. It is idempotent and
does nothing when `AIM_VLLM_DISABLE=1`, which gives plain vLLM with the package installed.
On a vLLM version the glue was not written for it logs one error and leaves vLLM untouched: the
entry point loads in every vLLM process of the environment, and a process that never asked for
AIM must keep working (`aim-vllm engine` refuses to start instead).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

DISABLE_ENV = "AIM_VLLM_DISABLE"
SKIP_VERSION_CHECK_ENV = "AIM_VLLM_SKIP_VERSION_CHECK"
SUPPORTED_VLLM = ("0.32.",)  # version prefixes the glue in compat.py and models/ was written for

# vLLM architecture name -> AIM class (lazy import path)
MODELS = {
    "LlavaOnevisionForConditionalGeneration": (
        "aim_vllm.models.llava_onevision:AimLlavaOnevisionForConditionalGeneration"
    ),
    "Qwen2_5_VLForConditionalGeneration": "aim_vllm.models.qwen2_5_vl:AimQwen2_5_VLForConditionalGeneration",
    "LlavaForConditionalGeneration": "aim_vllm.models.llava:AimLlavaForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": "aim_vllm.models.qwen3_vl:AimQwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration": (
        "aim_vllm.models.qwen3_vl_moe:AimQwen3VLMoeForConditionalGeneration"
    ),
}

_registered = False


def register_all() -> None:
    """Register AIM's model classes with vLLM's `ModelRegistry` (idempotent)."""
    global _registered
    if _registered or os.environ.get(DISABLE_ENV) == "1":
        return
    _registered = True  # decided once per process, whatever the outcome
    problem = version_problem()
    if problem:
        logger.error("aim-vllm: not loaded, vLLM runs without AIM: %s", problem)
        return
    from aim_vllm.compat import ModelRegistry
    from aim_vllm.patches import apply_all

    for arch, cls in MODELS.items():
        ModelRegistry.register_model(arch, cls)
    apply_all()
    logger.info("aim-vllm: registered AIM models for %s", ", ".join(MODELS))


def version_problem() -> str:
    """'' when the installed vLLM is one this plugin supports (or the check is skipped), else why not."""
    import vllm

    if os.environ.get(SKIP_VERSION_CHECK_ENV) == "1" or vllm.__version__.startswith(SUPPORTED_VLLM):
        return ""
    return (
        f"aim-vllm supports vLLM {' or '.join(v + 'x' for v in SUPPORTED_VLLM)}, found {vllm.__version__}; "
        f"install a supported vLLM, or set {SKIP_VERSION_CHECK_ENV}=1 to try anyway"
    )
