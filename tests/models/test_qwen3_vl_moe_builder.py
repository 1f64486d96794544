"""`make-tiny-model --arch qwen3-vl --size 30b-a3b | tiny-moe`: Qwen3-VL-MoE checkpoints."""

from __future__ import annotations

import json

import torch

from aim_vllm.core.flops import LLMShape
from aim_vllm.model_builders import build_model


def test_published_30b_a3b_config(tmp_path) -> None:
    """Qwen3-VL-30B-A3B-Instruct's config.json values (MoE LLM, the 8B's ViT) with 2 LLM layers;
    the FLOPs model counts a token's 8 experts of width 768."""
    from transformers import Qwen3VLMoeConfig

    out = build_model(tmp_path / "m", "qwen3-vl", "30b-a3b", layers=2)
    config = Qwen3VLMoeConfig.from_pretrained(out)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (
        2048,
        32,
        4,
        128,
    )
    assert (text.num_experts, text.num_experts_per_tok, text.moe_intermediate_size) == (128, 8, 768)
    assert text.norm_topk_prob and text.decoder_sparse_step == 1 and text.mlp_only_layers == []
    assert text.num_hidden_layers == 2 and text.vocab_size == 151936 and not config.tie_word_embeddings
    assert text.rope_parameters["mrope_section"] == [24, 20, 20] and text.rope_parameters["rope_theta"] == 5e6
    assert (vision.hidden_size, vision.intermediate_size, vision.num_heads) == (1152, 4304, 16)
    assert vision.out_hidden_size == 2048 and len(vision.deepstack_visual_indexes) == 3
    raw = json.loads((out / "config.json").read_text())
    assert raw["architectures"] == ["Qwen3VLMoeForConditionalGeneration"]
    assert LLMShape.from_hf_config(raw).intermediate_size == 8 * 768
    assert not (out / "model.safetensors").exists()


def test_tiny_moe_writes_experts_in_the_published_layout(tmp_path) -> None:
    """The fused experts on disk are [E, d, 2f] and [E, f, d] (what vLLM's loader reads with
    `is_fused_checkpoint_transposed`); transformers reads them back as its [E, 2f, d], [E, d, f]."""
    from safetensors.torch import load_file
    from transformers import Qwen3VLMoeForConditionalGeneration

    out = build_model(tmp_path / "m", "qwen3-vl", "tiny-moe")
    saved = load_file(out / "model.safetensors")
    prefix = "model.language_model.layers.0.mlp.experts."
    assert saved[prefix + "gate_up_proj"].shape == (8, 128, 64)
    assert saved[prefix + "down_proj"].shape == (8, 32, 128)
    experts = (
        Qwen3VLMoeForConditionalGeneration.from_pretrained(out).model.language_model.layers[0].mlp.experts
    )
    assert torch.equal(experts.gate_up_proj, saved[prefix + "gate_up_proj"].transpose(1, 2))
    assert torch.equal(experts.down_proj, saved[prefix + "down_proj"].transpose(1, 2))
