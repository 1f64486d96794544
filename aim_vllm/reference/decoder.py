"""Pure-torch reference of the LLM part of a LLaVA-style model with AIM pruning (AIM §3.2).

The numerical oracle for the engine: a Qwen2/LLaMA decoder written out in plain torch from a
state dict, in two formulations that must agree on every kept token:

- removal (`prefill`/`decode`): after layer l's attention, pruned visual rows are dropped;
  later layers compute on the kept rows only (original RoPE positions) and layer l's KV cache
  holds only the tokens layer l processed. This is what the engine must reproduce.
- masking (`forward_masked`): every row is computed; pruned tokens are masked as both queries
  and keys (in attention and in PageRank). Slower, but a different code path to check removal.

The input is the LLM's input embeddings, already merged (see `merge`); the vision tower is not
part of this reference.

Dimensions:
    N: prompt tokens; d: hidden size; H/Hkv: query/key-value heads; D: head size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from aim_vllm.core.importance import (
    DEFAULT_ITERS,
    DEFAULT_TAU,
    importance,
    pagerank_importance_masked,
    select_kept_tokens,
)
from aim_vllm.core.token_counts import visual_kept_after_layer


@dataclass(frozen=True)
class DecoderConfig:
    """What the reference needs from a HF text config."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    mrope_section: tuple[int, ...] | None = None  # Qwen2-VL M-RoPE: frequency slots per t/h/w

    @classmethod
    def from_hf_text_config(cls, text: Mapping) -> DecoderConfig:
        heads = text["num_attention_heads"]
        rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
        section = rope.get("mrope_section")
        return cls(
            num_layers=text["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 10000.0))),
            rms_norm_eps=text["rms_norm_eps"],
            mrope_section=tuple(section) if section else None,
        )


@dataclass
class KVCache:
    """Per layer: keys/values [n_l, Hkv, D] of the prompt tokens that layer processed, + generated."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)


@dataclass
class PrefillResult:
    """Output of the removal prefill."""

    logits: torch.Tensor  # [n_final, vocab] for the rows leaving the last layer (kept[-1])
    cache: KVCache
    rows_per_layer: list[int]  # rows each layer's attention processed (= its KV entries)
    kept: list[torch.Tensor]  # per layer: original indices of the tokens leaving the layer

    @property
    def last_logits(self) -> torch.Tensor:
        """[vocab] at the last prompt token (never pruned: it is text)."""
        return self.logits[-1]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32, cast back (Qwen2RMSNorm / LlamaRMSNorm)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope_cos_sin(
    positions: torch.Tensor, config: DecoderConfig, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [N, D] for 1-D positions [N], or M-RoPE positions [3, N] with `mrope_section`."""
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, half, dtype=torch.float32) * 2 / config.head_dim))
    if positions.dim() == 1:
        freqs = positions.float()[:, None] * inv_freq[None, :]  # (N, D/2)
    else:
        per_axis = positions.float()[:, :, None] * inv_freq[None, None, :]  # (3, N, D/2)
        axis = torch.repeat_interleave(torch.arange(3), torch.tensor(config.mrope_section))
        freqs = per_axis[axis, :, torch.arange(half)].transpose(0, 1)  # (N, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x [N, heads, D] (Qwen2/LLaMA convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class ReferenceDecoder:
    """A Qwen2/LLaMA decoder from a state dict with keys `layers.{i}...`, `norm.weight`, `lm_head.weight`."""

    def __init__(self, weights: Mapping[str, torch.Tensor], config: DecoderConfig) -> None:
        self.w = dict(weights)
        self.config = config

    # -- building blocks -------------------------------------------------------------------
    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[f"{name}.weight"], self.w.get(f"{name}.bias"))

    def _qkv(self, layer: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Rotated q [N, H, D], k and v [N, Hkv, D] of layer `layer` for hidden states x [N, d]."""
        c, p = self.config, f"layers.{layer}.self_attn"
        h = rms_norm(x, self.w[f"layers.{layer}.input_layernorm.weight"], c.rms_norm_eps)
        q = self._linear(h, f"{p}.q_proj").view(-1, c.num_heads, c.head_dim)
        k = self._linear(h, f"{p}.k_proj").view(-1, c.num_kv_heads, c.head_dim)
        v = self._linear(h, f"{p}.v_proj").view(-1, c.num_kv_heads, c.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention of q [Nq, H, D] over k/v [Nk, Hkv, D] with a boolean mask [Nq, Nk]."""
        group = self.config.num_heads // self.config.num_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * self.config.head_dim**-0.5
        probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1).nan_to_num(0.0)
        return torch.einsum("hqk,khd->qhd", probs, v).flatten(1)

    def _finish_layer(self, layer: int, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """o_proj + residual + MLP + residual."""
        p = f"layers.{layer}"
        h = x + self._linear(attn, f"{p}.self_attn.o_proj")
        m = rms_norm(h, self.w[f"{p}.post_attention_layernorm.weight"], self.config.rms_norm_eps)
        gate, up = self._linear(m, f"{p}.mlp.gate_proj"), self._linear(m, f"{p}.mlp.up_proj")
        return h + self._linear(F.silu(gate) * up, f"{p}.mlp.down_proj")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(rms_norm(x, self.w["norm.weight"], self.config.rms_norm_eps), "lm_head")

    # -- removal formulation ---------------------------------------------------------------
    def prefill(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        is_visual: torch.Tensor,
        prune_layers: tuple[int, int] | None = None,
        tau: float = DEFAULT_TAU,
        iters: int = DEFAULT_ITERS,
        prune_keep: float | None = None,
        prune_method: str = "pagerank",
    ) -> PrefillResult:
        """Prefill embeds [N, d] at positions [N] or [3, N], pruning visual rows on schedule.

        `prune_keep` / `prune_method`: single-layer pruning and FastV importance (baselines).
        """
        c = self.config
        targets = visual_kept_after_layer(int(is_visual.sum()), c.num_layers, prune_layers, prune_keep)
        idx = torch.arange(embeds.shape[0])  # original index of each current row
        x, cache, rows, kept = embeds, KVCache(), [], []
        for layer in range(c.num_layers):
            cos, sin = rope_cos_sin(positions[..., idx], c, x.dtype)
            q, k, v = self._qkv(layer, x, cos, sin)
            cache.keys.append(k)
            cache.values.append(v)
            rows.append(x.shape[0])
            causal = torch.ones(len(idx), len(idx), dtype=torch.bool).tril()
            attn = self._attend(q, k, v, causal)
            visual_now = is_visual[idx]
            if targets[layer] < int(visual_now.sum()):  # 1. rank, 2. keep, 3. drop rows now
                scores = importance(prune_method, q, k, visual_now, tau=tau, iters=iters)
                keep = select_kept_tokens(scores, visual_now, targets[layer])
                x, attn, idx = x[keep], attn[keep], idx[keep]
            x = self._finish_layer(layer, x, attn)
            kept.append(idx)
        return PrefillResult(self.logits(x), cache, rows, kept)

    def decode(self, cache: KVCache, embed: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One decode step: embed [d] at `position` (scalar or [3]); appends to `cache`; returns logits."""
        c = self.config
        x = embed[None, :]
        cos, sin = rope_cos_sin(position.reshape(*position.shape, 1), c, x.dtype)
        for layer in range(c.num_layers):
            q, k, v = self._qkv(layer, x, cos, sin)
            cache.keys[layer] = torch.cat([cache.keys[layer], k])
            cache.values[layer] = torch.cat([cache.values[layer], v])
            everything = torch.ones(1, cache.keys[layer].shape[0], dtype=torch.bool)
            attn = self._attend(q, cache.keys[layer], cache.values[layer], everything)
            x = self._finish_layer(layer, x, attn)
        return self.logits(x[0])

    # -- masking formulation ---------------------------------------------------------------
    def forward_masked(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        is_visual: torch.Tensor,
        prune_layers: tuple[int, int] | None = None,
        tau: float = DEFAULT_TAU,
        iters: int = DEFAULT_ITERS,
        keep_sets: list[torch.Tensor] | None = None,
        prune_keep: float | None = None,
        prune_method: str = "pagerank",
        key_only: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """All rows through all layers; pruned tokens masked as queries and keys.

        `key_only=True` ranks like the AIM reference code (pruned tokens masked as keys only in
        PageRank); kept tokens' attention is the same, only the kept sets may differ.
        `keep_sets` (per layer, indices of visual tokens kept, e.g. `PrefillResult.kept`) replaces
        the PageRank selection: used to check decoding against a full recomputation.
        Returns the final hidden states [N, d] (meaningful on the last active set only) and,
        per layer, the boolean mask [N] of tokens leaving that layer.
        """
        c = self.config
        n = embeds.shape[0]
        targets = visual_kept_after_layer(int(is_visual.sum()), c.num_layers, prune_layers, prune_keep)
        cos, sin = rope_cos_sin(positions, c, embeds.dtype)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        active = torch.ones(n, dtype=torch.bool)
        x, masks = embeds, []
        for layer in range(c.num_layers):
            q, k, v = self._qkv(layer, x, cos, sin)
            queries = active[:, None] if not key_only else True  # key-only: pruned rows still attend
            attn = self._attend(q, k, v, causal & active[None, :] & queries)
            if keep_sets is not None:
                active = ~is_visual.clone()
                active[keep_sets[layer]] = True
            elif targets[layer] < int((is_visual & active).sum()):
                if key_only:
                    scores = pagerank_importance_masked(q, k, active, tau, iters, mask_queries=False)
                else:
                    scores = importance(prune_method, q, k, is_visual, active, tau, iters)
                present = active.nonzero().squeeze(-1)
                keep = select_kept_tokens(scores[present], is_visual[present], targets[layer])
                active = torch.zeros_like(active)
                active[present[keep]] = True
            x = self._finish_layer(layer, x, attn)
            masks.append(active)
        return x, masks


# checkpoint name prefix of an LLM tensor -> its prefix in the decoder's state dict (first match)
_LLM_PREFIXES = (
    ("language_model.model.", ""),
    ("language_model.", ""),
    ("model.language_model.", ""),
    ("lm_head.", "lm_head."),
)


def load_llm_weights(checkpoint_dir: str | Path) -> tuple[dict[str, torch.Tensor], DecoderConfig]:
    """The LLM's weights (keys relative to the decoder) and config from a LLaVA-style checkpoint.

    Reads the LLM's tensors from the safetensors files under either naming: the published LLaVA
    checkpoints' (`language_model.model.*`, `language_model.lm_head.*`) or transformers 5's
    (`model.language_model.*`, `lm_head.*`, e.g. Qwen2.5-VL); and `text_config` from config.json.
    """
    from safetensors.torch import load_file

    root = Path(checkpoint_dir)
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(root.glob("*.safetensors")):
        for name, tensor in load_file(file).items():
            for prefix, replacement in _LLM_PREFIXES:
                if name.startswith(prefix):
                    weights[replacement + name[len(prefix) :]] = tensor
                    break
    config = json.loads((root / "config.json").read_text())
    return weights, DecoderConfig.from_hf_text_config(config.get("text_config") or config)
