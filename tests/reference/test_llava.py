"""The LLaVA-1.5 reference: CLIP keys from plain torch == transformers'; AIM off == transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aim_vllm.core.merge import merge_frames
from aim_vllm.reference.llava import LlavaReference

PROMPT = "<|im_start|>user\n<image>\nWhat colour is the square?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def reference() -> LlavaReference:
    from aim_vllm.model_builders import default_model_dir

    return LlavaReference(default_model_dir("llava-1.5"))


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((300, 400, 3)) * 255).astype("uint8"))


def test_keys_equal_the_layer_keys_transformers_computes(reference: LlavaReference, image) -> None:
    """The metric is the feature layer's own k_proj output (CLS dropped), averaged over heads."""
    tower = reference.hf.model.vision_tower
    feature_layer = reference.hf.config.vision_feature_layer % (len(tower.encoder.layers) + 1)
    captured = []
    attn = tower.encoder.layers[feature_layer - 1].self_attn
    handle = attn.k_proj.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        _, keys = reference.features_and_keys(image)
    finally:
        handle.remove()
    heads = reference.hf.config.vision_config.num_attention_heads
    expected = captured[0][0, 1:].view(576, heads, -1).mean(dim=1)
    torch.testing.assert_close(keys, expected, rtol=1e-6, atol=1e-6)


def test_unmerged_item_equals_transformers_image_features(reference: LlavaReference, image) -> None:
    """At ratio 1.0 the item is transformers' projected layer -2 features without CLS (576 tokens)."""
    pixels = reference.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = reference.hf.model.get_image_features(pixel_values=pixels).pooler_output[0]
    got = reference.item("image", image, 1.0)
    assert got.shape[0] == 576
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_aim_off_equals_transformers_forward(reference: LlavaReference, image) -> None:
    """CLIP + projector + the pure-torch LLaMA decoder == transformers' full forward (fp32, 1e-5)."""
    inputs = reference.processor(text=[PROMPT], images=[image], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    embeds, is_visual = reference.prompt_embeddings(ids, [reference.item("image", image, 1.0)])
    positions, _ = reference.positions(ids, [])
    got = reference.decoder.prefill(embeds, positions, is_visual).logits
    with torch.no_grad():
        expected = reference.hf(**inputs).logits[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("ratio", "tokens"), [(0.4375, 252), (0.125, 72), (0.5, 288), (0.3, 173)])
def test_merged_item_follows_the_keys(reference: LlavaReference, image, ratio: float, tokens: int) -> None:
    """576 -> the paper's counts; the features are merged as the keys decide, then projected."""
    features, keys = reference.features_and_keys(image)
    item = reference.item("image", image, ratio)
    assert item.shape[0] == tokens
    merged = merge_frames(features[None], tokens, metric=keys[None])[0]
    with torch.no_grad():
        torch.testing.assert_close(item, reference.hf.model.multi_modal_projector(merged))
    assert not torch.equal(merged, merge_frames(features[None], tokens)[0])  # the keys matter
