"""Checkpoints this project builds offline (no hub): tiny random-weight models and real shapes.

`default_model_dir()` is the embedded default model: built on first use into the cache
(`$AIM_VLLM_CACHE`, default ~/.cache/aim-vllm) under a key that changes whenever the builder's
code or the transformers version changes, so a stale build is never reused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

DEFAULT_ARCH = "llava-onevision"
# architecture -> builder module exposing build(out_dir, size, seed)
BUILDERS = {
    "llava-onevision": "aim_vllm.model_builders.llava_onevision",
    "qwen2.5-vl": "aim_vllm.model_builders.qwen2_5_vl",
    "llava-1.5": "aim_vllm.model_builders.llava",
    "qwen3-vl": "aim_vllm.model_builders.qwen3_vl",
}
# each builder accepts a subset (0.5b: llava-onevision; 3b: qwen2.5-vl; 2b, 4b, 8b, tiny-moe, 30b-a3b:
# qwen3-vl)
SIZES = ("tiny", "tiny-moe", "0.5b", "2b", "3b", "4b", "7b", "8b", "30b-a3b")


def cache_root() -> Path:
    return Path(os.environ.get("AIM_VLLM_CACHE", Path.home() / ".cache" / "aim-vllm"))


def build_model(
    out_dir: Path,
    arch: str = DEFAULT_ARCH,
    size: str = "tiny",
    seed: int = 0,
    layers: int | None = None,
    vision_layers: int | None = None,
) -> Path:
    """Write the checkpoint of `arch` at `size` into `out_dir` (weights only for `tiny`).

    `layers`: a published size shrunk to this many LLM layers (`shrink_checkpoint`);
    `vision_layers` (with `layers`): its vision tower to this many blocks.
    """
    import importlib

    if arch not in BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(BUILDERS)}")
    if layers is not None and size.startswith("tiny"):
        raise ValueError("--layers shrinks a published size (config only); the tiny model has weights")
    if vision_layers is not None and layers is None:
        raise ValueError("--vision-layers needs --layers (it shrinks a published config)")
    out = importlib.import_module(BUILDERS[arch]).build(Path(out_dir), size=size, seed=seed)
    if layers is not None:
        shrink_checkpoint(out, layers, vision_layers)
    return out


def default_model_dir(arch: str = DEFAULT_ARCH, size: str = "tiny", layers: int | None = None) -> Path:
    """The cached build of `arch`/`size` (shrunk to `layers`), built once under a file lock if missing."""
    shrunk = f"-{layers}layers" if layers is not None else ""
    target = cache_root() / "models" / f"{arch}-{size}{shrunk}-{_build_key(arch)}"

    def build(out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)  # a build interrupted half-way starts over
        build_model(out, arch, size, layers=layers)

    return _cached(target, build)


def shrink_checkpoint(checkpoint: Path, layers: int, vision_layers: int | None = None) -> None:
    """Keep a published config's shapes but only `layers` LLM layers and `vision_layers` (default
    max(2, layers)) vision layers (LLaVA-1.5 reads CLIP's second-to-last layer): a real model's
    widths, vocabulary, processors and length limits, cheap enough to serve on a CPU with
    `--load-format dummy`."""
    if layers < 1 or (vision_layers is not None and vision_layers < 2):
        raise ValueError(f"layers must be at least 1 and vision layers 2, got {layers}, {vision_layers}")
    path = Path(checkpoint) / "config.json"
    config = json.loads(path.read_text())
    text = config.get("text_config", config)
    text["num_hidden_layers"] = layers
    if isinstance(text.get("layer_types"), list):
        text["layer_types"] = text["layer_types"][:layers]
    vision = config.get("vision_config") or {}
    depth = max(2, layers) if vision_layers is None else vision_layers
    vision["depth" if "depth" in vision else "num_hidden_layers"] = depth
    if "fullatt_block_indexes" in vision:  # Qwen2.5-VL: window attention except in these blocks
        vision["fullatt_block_indexes"] = [i for i in vision["fullatt_block_indexes"] if i < depth] or [
            depth - 1
        ]
    if "deepstack_visual_indexes" in vision:  # Qwen3-VL: taps spread evenly over the shrunk tower
        vision["deepstack_visual_indexes"] = deepstack_indexes(len(vision["deepstack_visual_indexes"]), depth)
        vision["depth"] = max(depth, len(vision["deepstack_visual_indexes"]))
    path.write_text(json.dumps(config, indent=2) + "\n")


def deepstack_indexes(levels: int, depth: int) -> list[int]:
    """`levels` distinct DeepStack taps of a tower of `depth` blocks (at least `levels`), spread
    like the published 2B/4B's [5, 11, 17] of 24: block (i + 1) * depth // (levels + 1) - 1."""
    depth = max(depth, levels)
    return [max(i, (i + 1) * depth // (levels + 1) - 1) for i in range(levels)]


def _cached(target: Path, build: Callable[[Path], object]) -> Path:
    """`target`, after `build(target)` ran once (file lock across processes; `.complete` marker)."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            build(target)
            (target / ".complete").touch()
    return target


def _build_key(arch: str) -> str:
    """Hash of the builder sources and the transformers version."""
    import importlib.metadata

    here = Path(__file__).parent
    sources = [here / "tokenizer.py", here / "checkpoint.py", here / f"{BUILDERS[arch].rsplit('.', 1)[1]}.py"]
    digest = hashlib.sha256(importlib.metadata.version("transformers").encode())
    for path in sources:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def trained_model_dir(config=None, threads: int | None = None) -> Path:
    """The LLaVA-OneVision trained on synthetic shape QA (`aim_vllm.training`), cached.

    Trained once (under a file lock; minutes on 2 CPU cores, an interrupted run resumes) into
    the cache under a key of the training, data and builder code, the torch and transformers
    versions and `config` (a `training.TrainConfig`; default: its defaults).
    """
    from aim_vllm.training import TrainConfig, train_best_of

    config = config or TrainConfig()
    target = cache_root() / "models" / f"{DEFAULT_ARCH}-synthetic-{config.size}-{_train_key(config)}"
    return _cached(target, lambda out: train_best_of(out, config, threads=threads))


def _train_key(config) -> str:
    """Hash of the training, data and builder sources, torch/transformers versions and the config."""
    import importlib.metadata
    import json

    here = Path(__file__).parent
    sources = [here / "tokenizer.py", here / "checkpoint.py", here / "llava_onevision.py"]
    sources += [here.parent / "training.py", here.parent / "synthetic.py", here.parent / "media.py"]
    versions = [importlib.metadata.version(name) for name in ("torch", "transformers")]
    digest = hashlib.sha256(json.dumps([versions, config.to_json()], sort_keys=True).encode())
    for path in sources:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
