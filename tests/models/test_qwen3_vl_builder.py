"""`make-tiny-model --arch qwen3-vl`: published Qwen3-VL shapes, and shrinking that keeps DeepStack valid."""

from __future__ import annotations

import json

import pytest

from aim_vllm.model_builders import build_model, deepstack_indexes


def test_deepstack_taps_spread_like_the_published_ones() -> None:
    """The rule gives the 2B/4B's own taps on their 24-block tower, and distinct taps inside any
    shrunk tower (vLLM and transformers only inject the levels whose block exists)."""
    assert deepstack_indexes(3, 24) == [5, 11, 17]
    for depth in range(1, 30):
        taps = deepstack_indexes(3, depth)
        assert len(set(taps)) == 3 and taps == sorted(taps) and taps[-1] < max(depth, 3)


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_shrunk_published_config_keeps_widths_and_valid_taps(tmp_path, layers) -> None:
    """4B shrunk to `layers`: the published widths (head_dim 128 != hidden / heads, interleaved
    M-RoPE 24:20:20) with `layers` LLM layers and a tower deep enough for its three taps."""
    from transformers import Qwen3VLConfig

    out = build_model(tmp_path / "m", "qwen3-vl", "4b", layers=layers)
    config = Qwen3VLConfig.from_pretrained(out)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (
        2560,
        32,
        8,
        128,
    )
    assert text.num_hidden_layers == layers and text.vocab_size == 151936
    assert text.rope_parameters["mrope_section"] == [24, 20, 20] and text.rope_parameters["mrope_interleaved"]
    assert vision.out_hidden_size == 2560 and vision.hidden_size == 1024
    assert vision.depth >= 3 and len(vision.deepstack_visual_indexes) == 3
    assert all(0 <= i < vision.depth for i in vision.deepstack_visual_indexes)
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "Qwen3VLForConditionalGeneration"
    ]


def test_vision_layers_shrink_the_tower_on_its_own(tmp_path) -> None:
    """`--vision-layers`: the ViT's depth apart from the LLM's, the DeepStack taps spread over it."""
    out = build_model(tmp_path / "m", "qwen3-vl", "8b", layers=4, vision_layers=9)
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 4
    assert config["vision_config"]["depth"] == 9
    assert config["vision_config"]["deepstack_visual_indexes"] == deepstack_indexes(3, 9) == [1, 3, 5]
    with pytest.raises(ValueError, match="needs --layers"):
        build_model(tmp_path / "n", "qwen3-vl", "8b", vision_layers=9)
    with pytest.raises(ValueError, match="vision layers 2"):
        build_model(tmp_path / "o", "qwen3-vl", "8b", layers=4, vision_layers=1)
