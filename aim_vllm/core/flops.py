"""LLM prefill FLOPs model used for every FLOPs figure (AIM §4, FLOPs analysis).

Per decoder layer processing n tokens (hidden d, key/value width d_kv, MLP width d_ff, h heads):

    2n(2d^2 + 2d*d_kv + 3d*d_ff) + 4n^2*d + 5hn^2 + 17dn

where the attention is as wide as the hidden state (h * head_dim = d). Where it is not (Qwen3-VL-4B:
32 x 128 = 4096 over d = 2560), the query width d_q = h * head_dim replaces d in the q and o
projections and in the scores and weighted sum: 2n(2d*d_q + 2d*d_kv + 3d*d_ff) + 4n^2*d_q + ...

Two conventions:
- paper: layer l is counted with n_l = text + visual kept *after* layer l, as if it already ran on
  the reduced set. This reproduces the paper's tables (99.63 -> 14.76 TFLOPs for LLaVA-OV-7B).
- executed: what an implementation that removes rows right after layer l's attention computes:
  layer l's QKV projections and attention run on n_(l-1) tokens, its o_proj and MLP on n_l.

Plain Python (no torch) so the gateway can estimate costs without loading the engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LLMShape:
    """The decoder dimensions the FLOPs model needs."""

    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def q_width(self) -> int:
        """Width of the queries and of the attention output (the hidden size in most models)."""
        return self.num_heads * self.head_dim

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> LLMShape:
        """Read a HF config dict (a multimodal one uses its `text_config`)."""
        text = config.get("text_config") or config
        heads = text["num_attention_heads"]
        return cls(
            hidden_size=text["hidden_size"],
            num_layers=text["num_hidden_layers"],
            intermediate_size=_mlp_width(text),
            num_heads=heads,
            num_kv_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
        )


def _mlp_width(text: Mapping[str, Any]) -> int:
    """d_ff a token passes through: a sparse MoE's is its experts per token x the expert width
    (Qwen3-VL-30B-A3B: 8 x 768; the router's d x E multiply-adds left out), else the MLP's."""
    if text.get("num_experts") or text.get("num_local_experts"):
        return text["num_experts_per_tok"] * text["moe_intermediate_size"]
    return text["intermediate_size"]


def _linear_flops(n: float, shape: LLMShape) -> tuple[float, float]:
    """(QKV projections, o_proj + MLP) multiply-add FLOPs for n tokens."""
    d, d_q = shape.hidden_size, shape.q_width
    qkv = 2 * n * (d * d_q + 2 * d * shape.kv_width)
    out_mlp = 2 * n * (d_q * d + 3 * d * shape.intermediate_size)
    return qkv, out_mlp


def _attention_flops(n: float, shape: LLMShape) -> float:
    """Scores, weighted sum, softmax and the per-token element-wise work for n tokens."""
    return 4 * n * n * shape.q_width + 5 * shape.num_heads * n * n + 17 * shape.hidden_size * n


def layer_flops(n: float, shape: LLMShape) -> float:
    """FLOPs of one decoder layer on n tokens (the spec's formula)."""
    qkv, out_mlp = _linear_flops(n, shape)
    return qkv + out_mlp + _attention_flops(n, shape)


def prefill_flops(tokens_after_layer: Sequence[int], shape: LLMShape) -> float:
    """Paper convention: layer l counted with the tokens that leave it."""
    _check_layers(tokens_after_layer, shape)
    return sum(layer_flops(n, shape) for n in tokens_after_layer)


def executed_prefill_flops(tokens_in: int, tokens_after_layer: Sequence[int], shape: LLMShape) -> float:
    """Executed convention: QKV + attention on the tokens entering a layer, the rest on those leaving."""
    _check_layers(tokens_after_layer, shape)
    total, n_in = 0.0, tokens_in
    for n_out in tokens_after_layer:
        qkv, _ = _linear_flops(n_in, shape)
        _, out_mlp = _linear_flops(n_out, shape)
        total += qkv + _attention_flops(n_in, shape) + out_mlp
        n_in = n_out
    return total


def _check_layers(tokens_after_layer: Sequence[int], shape: LLMShape) -> None:
    if len(tokens_after_layer) != shape.num_layers:
        raise ValueError(
            f"need one token count per layer ({shape.num_layers}), got {len(tokens_after_layer)}"
        )
