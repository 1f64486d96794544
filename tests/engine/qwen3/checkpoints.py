"""The Qwen3-VL test checkpoints and prompt: the tiny model deepened to 6 LLM layers (so pruning
from L = 3 has layers to run) and its ViT sharpened; plain helpers, importable from any test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

QUESTION = "What colour is the square?"
DEEPSTACK_LEVELS = 3  # L of the tiny model: DeepStack added after LLM layers 0, 1, 2
DEEP_LAYERS = 6  # the deeper tiny model's LLM layers: pruning from layer 3 has 3 layers to run
# The tiny model's processors: a 400x300 image -> 12 x 9 merged grid (patch 16, merge 2);
# 4 frames of 384x384 -> 2 temporal slices of 8 x 8, each its own `<t seconds>` run.
IMAGE_TOKENS, VIDEO_SLICES, SLICE_TOKENS = 108, 2, 64
# q and k of every ViT block scaled by this (scores by its square): the tiny tower's attention is
# near uniform, so without it a merged token's rotary angles would barely move the logprobs.
VIT_QK_SCALE = 8.0


def deeper_checkpoint(source: Path, target: Path, layers: int = DEEP_LAYERS) -> Path:
    """The tiny Qwen3-VL with `layers` LLM layers (its ViT and DeepStack taps unchanged): layer i
    past the source's n is layer i % n with seeded noise. The tiny model's 4 layers leave one
    after the DeepStack layers, where pruning drops rows no later layer reads."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    n = config["text_config"]["num_hidden_layers"]
    config["text_config"]["num_hidden_layers"] = layers
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights = load_file(target / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    prefix = "model.language_model.layers."
    for layer in range(n, layers):
        source_prefix = f"{prefix}{layer % n}."
        for name, tensor in sorted(weights.items()):
            if name.startswith(source_prefix):
                noise = 0.02 * torch.randn(tensor.shape, generator=generator)
                weights[f"{prefix}{layer}.{name[len(source_prefix) :]}"] = tensor + noise
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def sharpen_vit(model_dir: Path, scale: float = VIT_QK_SCALE) -> Path:
    """`model_dir`'s checkpoint with the q and k rows of every ViT block's qkv scaled, in place."""
    from safetensors.torch import load_file, save_file

    weights = load_file(model_dir / "model.safetensors")
    for name, tensor in weights.items():
        if name.startswith("model.visual.blocks.") and name.endswith(".attn.qkv.weight"):
            tensor[: 2 * tensor.shape[1]] *= scale  # rows: q, k, v
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    return model_dir
