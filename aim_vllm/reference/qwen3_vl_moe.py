"""Reference of one Qwen3-VL-MoE request with AIM (transformers' `Qwen3VLMoeForConditionalGeneration`).

Everything is `reference.qwen3_vl`'s: the vision tower, DeepStack, M-RoPE (rotary embedding and
rotation identical to Qwen3-VL's), attention with q/k norms. Only the MLP of each layer differs:
`Qwen3VLMoeTextSparseMoeBlock` (softmax router, top-k renormalised, experts summed with those
weights), which takes [batch, seq, d]; in the removal loop it runs on the rows kept after the
layer's attention, each row routed on its own.
"""

from __future__ import annotations

import torch

from aim_vllm.reference.qwen3_vl import Qwen3VLReference


class Qwen3VLMoeReference(Qwen3VLReference):
    """A Qwen3-VL-MoE checkpoint loaded for reference computations (float32, CPU)."""

    hf_class = "Qwen3VLMoeForConditionalGeneration"

    @staticmethod
    def _finish(layer, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """o_proj + residual + sparse MoE block (on [1, n, d]) + residual."""
        h = x + layer.self_attn.o_proj(attn)
        return h + layer.mlp(layer.post_attention_layernorm(h)[None])[0]
