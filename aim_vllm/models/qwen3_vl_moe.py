"""AIM for Qwen3-VL-MoE in vLLM (Qwen3-VL-30B-A3B): the dense Qwen3-VL override on the MoE LLM.

vllm==0.32.0 `model_executor/models/qwen3_vl_moe.py` keeps Qwen3-VL's vision tower, processor,
DeepStack and M-RoPE (`Qwen3VLMoeForConditionalGeneration` subclasses
`Qwen3VLForConditionalGeneration`) and swaps the LLM for `Qwen3MoeLLMModel`, whose layers
(`Qwen3MoeDecoderLayer`) are Qwen3's, q/k norms included, with a sparse MoE block
(`Qwen3MoeSparseMoeBlock`: router + fused experts) as `mlp`. So everything of `models/qwen3_vl.py`
applies as it is: merging per temporal slice with DeepStack rows, M-RoPE by rule, timestamps
untouched, pruning from layer L on in the shared decoder (`pruning/decoder.py`), which calls
`layer.mlp` on the rows present. The MoE block routes each row on its own (per-row softmax,
top-k, weighted sum of its experts), so dropping rows before it is exact for the kept rows, and
the router and experts run on the kept rows only (fewer rows, not masks).
"""

from __future__ import annotations

from aim_vllm.compat import (
    MULTIMODAL_REGISTRY,
    Qwen3VLDummyInputsBuilder,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLMoeProcessingInfo,
)
from aim_vllm.models.qwen3_vl import AimQwen3VLForConditionalGeneration, AimQwen3VLMultiModalProcessor


@MULTIMODAL_REGISTRY.register_processor(
    AimQwen3VLMultiModalProcessor,
    info=Qwen3VLMoeProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class AimQwen3VLMoeForConditionalGeneration(
    AimQwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration
):
    """`AimQwen3VLForConditionalGeneration` over vLLM's MoE class: its `__init__` (the MoE LLM),
    then the AIM mixins' (method order: AIM, M-RoPE mixin, vLLM MoE, vLLM dense)."""
