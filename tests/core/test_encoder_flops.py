"""Vision-encoder FLOPs (`core.encoder_flops`): LLaVA-style towers per frame / crop, Qwen2.5-VL's
windowed ViT and Qwen3-VL's per-slice ViT per item, stock and merged inside the tower."""

import pytest

from aim_vllm.core.encoder_flops import (
    FrameVisionShape,
    VisionShape,
    WindowedVisionShape,
    encoder_flops,
    encoder_flops_ratio,
    vision_layer_flops,
    vit_layer_flops,
)
from aim_vllm.core.token_counts import kept_token_count, merge_start_layer

# Qwen2.5-VL-3B-Instruct's published vision_config (the keys the FLOPs model reads)
QWEN_3B_VIT = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "patch_size": 14,
    "spatial_merge_size": 2,
    "window_size": 112,
}


def test_encoder_flops_of_merged_layers() -> None:
    """SigLIP-so400m (LLaVA-OneVision's tower, 26 layers used): 729 patches, merged to half from layer 6."""
    shape = VisionShape(hidden_size=1152, num_layers=26, intermediate_size=4304, num_heads=16)
    full = encoder_flops(729, shape)
    assert full == 26 * vision_layer_flops(729, shape)
    assert 0.6e12 < full < 0.7e12  # about 0.64 TFLOP per 384x384 frame
    start, kept = merge_start_layer(26), kept_token_count(729, 0.5)
    merged = encoder_flops(729, shape, start, kept)
    assert merged == 6 * vision_layer_flops(729, shape) + 20 * vision_layer_flops(365, shape)
    assert 0.5 < merged / full < 0.65


def test_vision_shape_from_published_configs() -> None:
    """LLaVA-OneVision: 26 SigLIP layers used, 729 patches; LLaVA-1.5: 23 of 24 CLIP layers, CLS + 576."""
    siglip = {
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "num_hidden_layers": 26,
        "intermediate_size": 4304,
        "num_attention_heads": 16,
        "image_size": 384,
        "patch_size": 14,
    }
    clip = {
        "model_type": "clip_vision_model",
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "image_size": 336,
        "patch_size": 14,
    }
    ov = VisionShape.from_hf_config({"vision_config": siglip, "vision_feature_layer": -1})
    llava = VisionShape.from_hf_config({"vision_config": clip, "vision_feature_layer": -2})
    assert (ov.num_layers, ov.tokens, ov.protected) == (26, 729, 0)
    assert (llava.num_layers, llava.tokens, llava.protected) == (23, 577, 1)
    assert encoder_flops_ratio(ov, 1.0) == 1.0
    assert 0.55 < encoder_flops_ratio(ov, 0.5) < 0.65 and encoder_flops_ratio(ov, 0.25) < encoder_flops_ratio(
        ov, 0.5
    )
    qwen = {"model_type": "qwen2_5_vl", "depth": 32, "hidden_size": 1280}
    assert VisionShape.from_hf_config({"vision_config": qwen}) is None


def test_windows_of_a_frame() -> None:
    """Windows of 8 x 8 patches, row-major; the last row / column of windows partial."""
    vit = WindowedVisionShape.from_hf_config({"vision_config": QWEN_3B_VIT})
    assert vit is not None and (vit.window, vit.merge, vit.full_attention) == (8, 2, (7, 15, 23, 31))
    assert vit.window_lengths(16, 16) == [64] * 4  # 224 x 224: 2 x 2 whole windows
    assert vit.window_lengths(12, 20) == [64, 64, 32, 32, 32, 16]  # 6 x 10 merge units
    assert sum(vit.window_lengths(36, 50)) == 36 * 50
    assert VisionShape.from_hf_config({"vision_config": QWEN_3B_VIT}) is None
    assert (
        WindowedVisionShape.from_hf_config({"vision_config": {"model_type": "siglip_vision_model"}}) is None
    )


def test_windowed_item_flops_written_out() -> None:
    """Two blocks, the second with full attention: window segments, then frame segments per slice."""
    vit = WindowedVisionShape(hidden_size=8, depth=2, intermediate_size=16, num_heads=2, full_attention=(1,),
                              window=4, merge=2)  # fmt: skip
    windows = vit.window_lengths(6, 4)  # 3 x 2 merge units, windows of 2 x 2 units: [16, 8]
    assert windows == [16, 8]
    grid = (3, 6, 4)  # three temporal slices
    block = lambda segments: vit_layer_flops(72, 8, 16, 2, 3, segments)  # noqa: E731
    assert vit.item_flops(grid) == block([16, 8] * 3) + block([24] * 3)
    start = merge_start_layer(2)  # block 1 runs merged: each window at its kept count
    assert start == 1
    kept = [kept_token_count(16, 0.5), kept_token_count(8, 0.5)]  # 8, 4
    merged = vit_layer_flops(72, 8, 16, 2, 3, [16, 8] * 3) + vit_layer_flops(36, 8, 16, 2, 3, [sum(kept)] * 3)
    assert vit.item_flops(grid, 0.5) == merged
    assert vit_layer_flops(10, 8, 16, 2, 3) == vit_layer_flops(10, 8, 16, 2, 3, [10])


def test_qwen_3b_item_flops() -> None:
    """A 224 x 224 frame pair through Qwen2.5-VL-3B's ViT: 256 patches; merged to half from block 8 of
    32, the linear layers do (8 + 24 / 2) / 32 = 62.5% of their work; the windows' attention less."""
    vit = WindowedVisionShape.from_hf_config({"vision_config": QWEN_3B_VIT})
    stock = vit.item_flops((1, 16, 16))
    assert 0.32e12 < stock < 0.34e12  # linear: 2 x 256 x 32 x (4 x 1280^2 + 3 x 1280 x 3420) = 0.323 TFLOP
    assert vit.item_flops((4, 16, 16)) == pytest.approx(4 * stock)  # slices are independent
    ratio = vit.item_flops((1, 16, 16), 0.5) / stock
    assert 0.6 < ratio < 0.64
    assert vit.item_flops((1, 16, 16), 1.0) == stock


def test_frame_item_flops_written_out() -> None:
    """Qwen3-VL's ViT: every block attends per temporal slice, a plain MLP (m = 2); from the start
    block on each slice carries its kept count."""
    vit = FrameVisionShape(hidden_size=8, depth=4, intermediate_size=16, num_heads=2)
    grid = (2, 6, 4)  # two slices of 24 patches
    block = lambda n, segments: vit_layer_flops(n, 8, 16, 2, 2, segments)  # noqa: E731
    assert vit.item_flops(grid) == 4 * block(48, [24, 24])
    assert merge_start_layer(4) == 1
    kept = kept_token_count(24, 0.5)
    assert vit.item_flops(grid, 0.5) == block(48, [24, 24]) + 3 * block(2 * kept, [kept, kept])


def test_qwen3_vit_from_published_config() -> None:
    """Qwen3-VL-8B's ViT (27 blocks of 1152, merging from block 6): a 512 x 512 image is 32 x 32
    patches; at keep 0.5 its linear layers do (6 + 21 / 2) / 27 = 61% of their work, its scores a
    quarter in the merged blocks, so the tower a little less. Other towers' configs give None."""
    config = {"vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                                "deepstack_visual_indexes": [8, 16, 24]}}  # fmt: skip
    vit = FrameVisionShape.from_hf_config(config)
    assert vit == FrameVisionShape(1152, 27, 4304, 16)
    ratio = vit.item_flops((1, 32, 32), 0.5) / vit.item_flops((1, 32, 32))
    assert 0.57 < ratio < (6 + 21 / 2) / 27
    assert FrameVisionShape.from_hf_config({"vision_config": QWEN_3B_VIT}) is None
