"""Qwen2.5-VL checkpoints built offline: a tiny random-weight model, or the published 3B / 7B shapes.

The tiny model keeps the geometry that decides token counts and positions: patch 14, PatchMerger
2x2 (28x28 pixels per LLM token), temporal patch 2 (one temporal slice per 2 frames), window
attention and M-RoPE (`mrope_section` scaled to the tiny head size). Images are resized to at
most 256 tokens and video frames to at most 64 tokens per slice, so tests stay fast on CPU.
The LLM is a 6-layer Qwen2 with head size 32 (the smallest vLLM's CPU attention supports), fp32.

Weights keep transformers 5's names (`model.language_model.*`, `model.visual.*`, `lm_head.*`):
vLLM 0.32's `Qwen2_5_VLForConditionalGeneration.hf_to_vllm_mapper` maps them, and transformers
loads them as saved. `3b` and `7b` write config + tokenizer + processor only, for
`--load-format dummy` (published Qwen2.5-VL-3B/7B-Instruct values: widths, vocabulary, 128k positions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aim_vllm.model_builders.checkpoint import write_checkpoint
from aim_vllm.model_builders.tokenizer import CHAT_TEMPLATE, END_OF_TEXT, IM_END, build_tokenizer

VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
SPECIAL_TOKENS = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

# Qwen2 LLMs: tiny, and Qwen2.5-VL-3B/7B-Instruct's. mrope_section sums to head_dim / 2.
TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        mrope_section=[4, 6, 6],
    ),
    "3b": dict(
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        mrope_section=[16, 24, 24],
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        mrope_section=[16, 24, 24],
    ),
}
# Vision towers (window attention; full attention in the listed blocks); 3B and 7B share one.
_QWEN2_5_VIT = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, fullatt_block_indexes=[7, 15, 23, 31]
)
VISION_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=2, fullatt_block_indexes=[3]),
    "3b": _QWEN2_5_VIT,
    "7b": _QWEN2_5_VIT,
}
_VOCAB = {"3b": 151936, "7b": 152064}
_MAX_POSITIONS = {"tiny": 32768, "3b": 128000, "7b": 128000}
_TIED = {"tiny": False, "3b": True, "7b": False}  # Qwen2.5-VL-3B ties its LM head to the embeddings
_TINY_VOCAB = 1024
_PIXELS_PER_TOKEN = 28 * 28  # patch 14 x merge 2, squared
# Pixel limits (`size` of the processors): tiny keeps tests fast, 7b uses the published ones.
_IMAGE_SIZE = {
    "tiny": {"shortest_edge": 56 * 56, "longest_edge": 256 * _PIXELS_PER_TOKEN},
    "3b": {"shortest_edge": 56 * 56, "longest_edge": 1280 * _PIXELS_PER_TOKEN},
    "7b": {"shortest_edge": 56 * 56, "longest_edge": 1280 * _PIXELS_PER_TOKEN},
}
_VIDEO_SIZE = {
    "tiny": {"shortest_edge": 56 * 56, "longest_edge": 64 * _PIXELS_PER_TOKEN},
    "3b": {"shortest_edge": 128 * _PIXELS_PER_TOKEN, "longest_edge": 768 * _PIXELS_PER_TOKEN},
    "7b": {"shortest_edge": 128 * _PIXELS_PER_TOKEN, "longest_edge": 768 * _PIXELS_PER_TOKEN},
}


def build_config(size: str, vocab_size: int, token_ids: dict[str, int]):
    """The HF `Qwen2_5_VLConfig` of `size` (float32 for tiny, untied embeddings)."""
    from transformers import Qwen2_5_VLConfig

    text = dict(TEXT_CONFIGS[size])
    section = text.pop("mrope_section")
    text_config = dict(
        vocab_size=vocab_size,
        max_position_embeddings=_MAX_POSITIONS[size],
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section},
        tie_word_embeddings=_TIED[size],
        bos_token_id=token_ids[END_OF_TEXT],
        eos_token_id=token_ids[IM_END],
        **text,
    )
    vision_config = dict(
        out_hidden_size=text["hidden_size"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        tokens_per_second=2,
        hidden_act="silu",
        **VISION_CONFIGS[size],
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token_ids[IMAGE_PAD],
        video_token_id=token_ids[VIDEO_PAD],
        vision_start_token_id=token_ids[VISION_START],
        vision_end_token_id=token_ids[VISION_END],
        tie_word_embeddings=_TIED[size],
    )
    config.dtype = "float32" if size == "tiny" else "bfloat16"
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


def build_processor(tokenizer_object, size: str):
    """HF `Qwen2_5_VLProcessor` with Qwen2-VL image/video processors (patch 14, merge 2, temporal 2)."""
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )
    geometry = dict(patch_size=14, merge_size=2, temporal_patch_size=2)
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(_IMAGE_SIZE[size]), **geometry),
        video_processor=Qwen2VLVideoProcessor(size=dict(_VIDEO_SIZE[size]), **geometry),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def build(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a Qwen2.5-VL checkpoint directory; weights only for `tiny` (seeded init)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    if size not in TEXT_CONFIGS:
        raise ValueError(f"unknown size {size!r} for qwen2.5-vl; expected one of {', '.join(TEXT_CONFIGS)}")
    tok = build_tokenizer(_TINY_VOCAB, pad_to=_VOCAB.get(size), extra_special_tokens=SPECIAL_TOKENS)
    processor = build_processor(tok, size)
    ids = processor.tokenizer
    token_ids = {t: ids.convert_tokens_to_ids(t) for t in (END_OF_TEXT, IM_END, *SPECIAL_TOKENS)}
    return write_checkpoint(
        out_dir,
        processor=processor,
        config=build_config(size, len(ids), token_ids),
        eos_token_id=token_ids[IM_END],
        model_cls=Qwen2_5_VLForConditionalGeneration,
        size=size,
        seed=seed,
    )  # transformers 5 names are the ones vLLM's Qwen2.5-VL loader maps
