"""LLaVA-OneVision checkpoints built offline: a tiny random-weight model, or published shapes.

The tiny model keeps the real geometry that decides token counts (SigLIP 384/14 -> 27x27
patches, 2x2 pooling -> 196 tokens per frame, anyres_max_9 grids for images) with very narrow
layers, so it loads in transformers, serves in vLLM in seconds, and exercises every count path.
Weights are written under the published checkpoints' names (`language_model.model.*`,
`vision_tower.vision_model.*`, ...): vLLM 0.32's loader expects the SigLIP `vision_model.` level,
which transformers 5's `save_pretrained` drops, and transformers 5 still loads these names.

Real shapes (`0.5b`, `7b`) write config + tokenizer + processor only, for `--load-format dummy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aim_vllm.model_builders.checkpoint import rename_state_dict, write_checkpoint
from aim_vllm.model_builders.tokenizer import CHAT_TEMPLATE, END_OF_TEXT, IM_END, build_tokenizer

# Qwen2 text configs: tiny, and the published LLaVA-OneVision 0.5B / 7B LLMs.
TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        # head size 32: the smallest vLLM's CPU attention supports
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
    ),
}
# SigLIP vision towers: tiny, and so400m-patch14-384 (both published sizes use it).
_SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16)
VISION_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
    "0.5b": _SIGLIP_SO400M,
    "7b": _SIGLIP_SO400M,
}
# Published vocabulary sizes; the tiny model uses its tokenizer's.
_VOCAB = {"0.5b": 151936, "7b": 152064}
_TINY_VOCAB = 1024


def build_config(size: str, vocab_size: int, image_token_id: int, video_token_id: int):
    """The HF `LlavaOnevisionConfig` of `size` (float32, untied, SigLIP 384/14, Qwen2 LLM)."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    text = Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=False,
        **TEXT_CONFIGS[size],
    )
    vision = SiglipVisionConfig(image_size=384, patch_size=14, vision_use_head=False, **VISION_CONFIGS[size])
    config = LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=image_token_id,
        video_token_index=video_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    config.dtype = "float32" if size == "tiny" else "bfloat16"
    config.architectures = ["LlavaOnevisionForConditionalGeneration"]
    return config


def build_processor(tokenizer_object):
    """HF `LlavaOnevisionProcessor` with the default (published) image and video processors."""
    from transformers import (
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        PreTrainedTokenizerFast,
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(),
        video_processor=LlavaOnevisionVideoProcessor(),
        tokenizer=tokenizer,
        num_image_tokens=729,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )


def build(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a LLaVA-OneVision checkpoint directory; weights only for `tiny` (seeded init)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    if size not in TEXT_CONFIGS:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(TEXT_CONFIGS)}")
    processor = build_processor(build_tokenizer(_TINY_VOCAB, pad_to=_VOCAB.get(size)))
    ids = processor.tokenizer
    config = build_config(
        size, len(ids), ids.convert_tokens_to_ids("<image>"), ids.convert_tokens_to_ids("<video>")
    )
    return write_checkpoint(
        out_dir,
        processor=processor,
        config=config,
        eos_token_id=ids.convert_tokens_to_ids(IM_END),
        model_cls=LlavaOnevisionForConditionalGeneration,
        size=size,
        seed=seed,
        prefixes=_CHECKPOINT_PREFIXES,
    )


# transformers 5 module names -> published checkpoint names (first matching prefix wins).
_CHECKPOINT_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
)


def checkpoint_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Rename a transformers-5 state dict to the published checkpoint names (contiguous tensors)."""
    return rename_state_dict(state_dict, _CHECKPOINT_PREFIXES)
