"""Engine tests of AIM on Qwen3-VL (dense, ViT merging, MoE): shared fixtures in `conftest`,
checkpoint helpers in `checkpoints`."""
