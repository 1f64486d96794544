"""LLaVA-1.5 checkpoints built offline: a tiny random-weight model, or the published 7B shapes.

The tiny model keeps the geometry AIM's LLaVA-1.5 setting depends on: a CLIP ViT with 336x336
inputs and 14x14 patches (576 patch tokens + CLS), features from the second-to-last layer
(`vision_feature_layer=-2`) without CLS ('default' strategy), a 2-layer GELU projector and a
LLaMA LLM (no qkv bias), here 6 layers with head size 32 (the smallest vLLM's CPU attention
supports), fp32. The CLIP tower is 3 layers deep, so the layer whose keys AIM merges with is
layer 1 (layer 22 of 24 in the 7B model's CLIP-L/336, counted from 0).

Weights are written under the published llava-hf names (`language_model.model.*`,
`language_model.lm_head.*`, `vision_tower.vision_model.*`, `multi_modal_projector.*`):
transformers 5's `save_pretrained` drops CLIP's `vision_model.` level, which vLLM 0.32's
loader expects; transformers 5 loads the published names. `7b` writes config + tokenizer +
processor only, for `--load-format dummy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aim_vllm.model_builders.checkpoint import write_checkpoint
from aim_vllm.model_builders.tokenizer import CHAT_TEMPLATE, END_OF_TEXT, IM_END, build_tokenizer

IMAGE_TOKEN = "<image>"
# LLaMA LLMs: tiny, and LLaVA-1.5-7B's (Vicuna-7B: multi-head attention, no qkv bias).
TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=4,
    ),
    "7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
}
# CLIP ViT towers at 336x336 / patch 14: tiny, and CLIP-L/14-336.
VISION_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2, projection_dim=32
    ),
    "7b": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        projection_dim=768,
    ),
}
_VOCAB = {"7b": 32064}
# LLaMA-7B's context is 4096; the tiny model allows `aim-vllm engine`'s default --max-model-len.
_MAX_POSITIONS = {"tiny": 8192, "7b": 4096}
_TINY_VOCAB = 1024
IMAGE_SIZE, PATCH_SIZE = 336, 14
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 576 (CLS dropped)


def build_config(size: str, vocab_size: int, image_token_id: int, token_ids: dict[str, int]):
    """The HF `LlavaConfig` of `size` (float32 for tiny, untied embeddings)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=_MAX_POSITIONS[size],
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=token_ids[END_OF_TEXT],
        eos_token_id=token_ids[IM_END],
        **TEXT_CONFIGS[size],
    )
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        **VISION_CONFIGS[size],
    )
    config = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=NUM_IMAGE_TOKENS,
        tie_word_embeddings=False,
    )
    config.dtype = "float32" if size == "tiny" else "float16"
    config.architectures = ["LlavaForConditionalGeneration"]
    return config


def build_processor(tokenizer_object, size: str):
    """HF `LlavaProcessor` with the published CLIP-336 image processor (resize + center crop)."""
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=_MAX_POSITIONS[size],
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def build(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a LLaVA-1.5 checkpoint directory; weights only for `tiny` (seeded init)."""
    from transformers import LlavaForConditionalGeneration

    if size not in TEXT_CONFIGS:
        raise ValueError(f"unknown size {size!r} for llava-1.5; expected one of {', '.join(TEXT_CONFIGS)}")
    processor = build_processor(build_tokenizer(_TINY_VOCAB, pad_to=_VOCAB.get(size)), size)
    ids = processor.tokenizer
    token_ids = {t: ids.convert_tokens_to_ids(t) for t in (END_OF_TEXT, IM_END)}
    config = build_config(size, len(ids), ids.convert_tokens_to_ids(IMAGE_TOKEN), token_ids)
    return write_checkpoint(
        out_dir,
        processor=processor,
        config=config,
        eos_token_id=token_ids[IM_END],
        model_cls=LlavaForConditionalGeneration,
        size=size,
        seed=seed,
        prefixes=_CHECKPOINT_PREFIXES,
    )


# transformers 5 module names -> published llava-hf checkpoint names (first matching prefix wins).
_CHECKPOINT_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)
