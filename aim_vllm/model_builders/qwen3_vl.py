"""Qwen3-VL checkpoints built offline: tiny random-weight models (dense, MoE), or the published
2B/4B/8B (dense) and 30B-A3B (MoE).

The tiny model keeps the geometry that decides token counts and positions: patch 16, PatchMerger
2x2 (32x32 pixels per LLM token), temporal patch 2 (one temporal slice per 2 frames, each slice
its own `<t seconds><|vision_start|>...<|vision_end|>` run in the prompt), interleaved M-RoPE
(`mrope_section` 6:5:5 as the published 24:20:20, scaled to the tiny head size) and DeepStack
(three ViT layers' features added to the visual rows after the first three LLM layers). Images
are resized to at most 256 tokens and a video to at most 256 tokens in all, so tests stay fast
on CPU. The LLM is a 4-layer Qwen3 (q/k norms) with head size 32 (the smallest vLLM's CPU
attention supports), fp32.

Weights keep transformers 5's names (`model.language_model.*`, `model.visual.*`, `lm_head.*`):
vLLM 0.32's `Qwen3VLForConditionalGeneration.hf_to_vllm_mapper` maps them, and transformers
loads them as saved. `2b`, `4b` and `8b` write config + tokenizer + processor only, for
`--load-format dummy` (published Qwen3-VL-2B/4B/8B-Instruct values: widths, head_dim 128,
vocabulary, 256k positions, rope theta 5e6, the ViT and its DeepStack layers); `30b-a3b` the
same for Qwen3-VL-30B-A3B-Instruct (`Qwen3VLMoeForConditionalGeneration`: 128 experts of width
768, 8 per token, in every layer). `tiny-moe` is the tiny model with a sparse MoE block (8 experts
of width 32, 2 per token) in every layer; its expert weights are written in the published fused
layout (`gate_up_proj` [E, d, 2f], `down_proj` [E, f, d]), which vLLM's loader
(`is_fused_checkpoint_transposed`) and transformers' `conversion_mapping` both read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aim_vllm.model_builders.checkpoint import write_checkpoint
from aim_vllm.model_builders.qwen2_5_vl import IMAGE_PAD, SPECIAL_TOKENS, VIDEO_PAD, VISION_END, VISION_START
from aim_vllm.model_builders.tokenizer import CHAT_TEMPLATE, END_OF_TEXT, IM_END, build_tokenizer

# Qwen3 LLMs: tiny, and Qwen3-VL-2B/4B/8B-Instruct's (config.json of each, text_config).
# mrope_section sums to head_dim / 2; the published models interleave it (t, h, w, t, h, w, ...).
TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        mrope_section=[6, 5, 5],
    ),
    "2b": dict(
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        mrope_section=[24, 20, 20],
    ),
    "4b": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        mrope_section=[24, 20, 20],
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        mrope_section=[24, 20, 20],
    ),
    "tiny-moe": dict(
        hidden_size=128,
        intermediate_size=256,  # unused: every layer is sparse
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        mrope_section=[6, 5, 5],
        moe_intermediate_size=32,  # 2f = 64 != d = 128: transformers tells the fused layouts apart by shape
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
    ),
    "30b-a3b": dict(
        hidden_size=2048,
        intermediate_size=6144,  # unused: every layer is sparse
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        mrope_section=[24, 20, 20],
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        norm_topk_prob=True,
        decoder_sparse_step=1,
    ),
}
# Vision towers (SigLIP-2 sized); DeepStack taps these blocks, injected after LLM layers 0, 1, 2.
_VIT_8B_30B = dict(
    depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, deepstack_visual_indexes=[8, 16, 24]
)
_VIT_TINY = dict(
    depth=4, hidden_size=64, intermediate_size=128, num_heads=2, deepstack_visual_indexes=[0, 1, 2]
)
_VIT_2B_4B = dict(
    depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, deepstack_visual_indexes=[5, 11, 17]
)
VISION_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": _VIT_TINY,
    "2b": _VIT_2B_4B,
    "4b": _VIT_2B_4B,
    "8b": _VIT_8B_30B,
    "tiny-moe": _VIT_TINY,
    "30b-a3b": _VIT_8B_30B,
}
TINY = ("tiny", "tiny-moe")  # sizes written with weights
_VOCAB = {"2b": 151936, "4b": 151936, "8b": 151936, "30b-a3b": 151936}
_MAX_POSITIONS = {
    "tiny": 32768,
    "2b": 262144,
    "4b": 262144,
    "8b": 262144,
    "tiny-moe": 32768,
    "30b-a3b": 262144,
}
# the 2B and 4B tie their LM head
_TIED = {"tiny": False, "2b": True, "4b": True, "8b": False, "tiny-moe": False, "30b-a3b": False}
_TINY_VOCAB = 1024
_PIXELS_PER_TOKEN = 32 * 32  # patch 16 x merge 2, squared
# Pixel limits (`size` of the processors; a video's limit covers all its frames): tiny keeps tests
# fast, the published sizes use the published preprocessor configs.
_IMAGE_SIZE = {
    "tiny": {"shortest_edge": 64 * 64, "longest_edge": 256 * _PIXELS_PER_TOKEN},
    "published": {"shortest_edge": 65536, "longest_edge": 16777216},
}
_VIDEO_SIZE = {
    "tiny": {"shortest_edge": 64 * 64, "longest_edge": 256 * _PIXELS_PER_TOKEN},
    "published": {"shortest_edge": 4096, "longest_edge": 25165824},
}


def is_moe(size: str) -> bool:
    """Whether `size` is a Qwen3-VL-MoE (`Qwen3VLMoeForConditionalGeneration`) shape."""
    return "num_experts" in TEXT_CONFIGS[size]


def build_config(size: str, vocab_size: int, token_ids: dict[str, int]):
    """The HF `Qwen3VLConfig` of `size`, `Qwen3VLMoeConfig` of a MoE size (float32 for tiny)."""
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    text = dict(TEXT_CONFIGS[size])
    section = text.pop("mrope_section")
    rope = {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": section,
        "mrope_interleaved": True,
    }
    text_config = dict(
        vocab_size=vocab_size,
        max_position_embeddings=_MAX_POSITIONS[size],
        rms_norm_eps=1e-6,
        rope_parameters=rope,
        tie_word_embeddings=_TIED[size],
        bos_token_id=token_ids[END_OF_TEXT],
        eos_token_id=token_ids[IM_END],
        **text,
    )
    vision_config = dict(
        out_hidden_size=text["hidden_size"],
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=2304,
        hidden_act="gelu_pytorch_tanh",
        **VISION_CONFIGS[size],
    )
    moe = is_moe(size)
    config = (Qwen3VLMoeConfig if moe else Qwen3VLConfig)(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token_ids[IMAGE_PAD],
        video_token_id=token_ids[VIDEO_PAD],
        vision_start_token_id=token_ids[VISION_START],
        vision_end_token_id=token_ids[VISION_END],
        tie_word_embeddings=_TIED[size],
    )
    config.dtype = "float32" if size in TINY else "bfloat16"
    config.architectures = [f"Qwen3VL{'Moe' if moe else ''}ForConditionalGeneration"]
    return config


def build_processor(tokenizer_object, size: str):
    """HF `Qwen3VLProcessor`: Qwen2-VL image processor and Qwen3-VL video processor (patch 16,
    merge 2, temporal 2, mean/std 0.5 as published)."""
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLImageProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )
    limits = "tiny" if size in TINY else "published"
    geometry = dict(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(_IMAGE_SIZE[limits]), **geometry),
        video_processor=Qwen3VLVideoProcessor(size=dict(_VIDEO_SIZE[limits]), **geometry),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def build(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a Qwen3-VL checkpoint directory; weights only for the tiny sizes (seeded init)."""
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

    if size not in TEXT_CONFIGS:
        raise ValueError(f"unknown size {size!r} for qwen3-vl; expected one of {', '.join(TEXT_CONFIGS)}")
    tok = build_tokenizer(_TINY_VOCAB, pad_to=_VOCAB.get(size), extra_special_tokens=SPECIAL_TOKENS)
    processor = build_processor(tok, size)
    ids = processor.tokenizer
    token_ids = {t: ids.convert_tokens_to_ids(t) for t in (END_OF_TEXT, IM_END, *SPECIAL_TOKENS)}
    out = write_checkpoint(
        out_dir,
        processor=processor,
        config=build_config(size, len(ids), token_ids),
        eos_token_id=token_ids[IM_END],
        model_cls=Qwen3VLMoeForConditionalGeneration if is_moe(size) else Qwen3VLForConditionalGeneration,
        size="tiny" if size in TINY else size,
        seed=seed,
    )  # transformers 5 names are the ones vLLM's Qwen3-VL loader maps
    if is_moe(size) and size in TINY:
        _publish_expert_layout(out / "model.safetensors")
    return out


def _publish_expert_layout(weights: Path) -> None:
    """Rewrite transformers 5's fused experts (`gate_up_proj` [E, 2f, d], `down_proj` [E, d, f])
    in the published layout, their last two dims swapped (transformers' `conversion_mapping`
    "qwen3_vl_moe" swaps them back on load)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    for name in tensors:
        if name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            tensors[name] = tensors[name].transpose(1, 2).contiguous()
    save_file(tensors, weights, metadata={"format": "pt"})
