"""Checkpoints this project builds offline (no hub): tiny random-weight models and real shapes.

`default_model_dir()` is the embedded default model: built on first use into the cache
(`$AIM_VLLM_CACHE`, default ~/.cache/aim-vllm) under a key that changes whenever the builder's
code or the transformers version changes, so a stale build is never reused.
"""

from __future__ import annotations

import fcntl
import hashlib
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
}
SIZES = ("tiny", "0.5b", "7b")  # each builder accepts a subset (0.5b: llava-onevision only)


def cache_root() -> Path:
    return Path(os.environ.get("AIM_VLLM_CACHE", Path.home() / ".cache" / "aim-vllm"))


def build_model(out_dir: Path, arch: str = DEFAULT_ARCH, size: str = "tiny", seed: int = 0) -> Path:
    """Write the checkpoint of `arch` at `size` into `out_dir` (weights only for `tiny`)."""
    import importlib

    if arch not in BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(BUILDERS)}")
    return importlib.import_module(BUILDERS[arch]).build(Path(out_dir), size=size, seed=seed)


def default_model_dir(arch: str = DEFAULT_ARCH, size: str = "tiny") -> Path:
    """The cached build of `arch`/`size`, built (once, under a file lock) if missing."""
    target = cache_root() / "models" / f"{arch}-{size}-{_build_key(arch)}"

    def build(out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)  # a build interrupted half-way starts over
        build_model(out, arch, size)

    return _cached(target, build)


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
    from aim_vllm.training import TrainConfig, train

    config = config or TrainConfig()
    target = cache_root() / "models" / f"{DEFAULT_ARCH}-synthetic-{config.size}-{_train_key(config)}"
    return _cached(target, lambda out: train(out, config, threads=threads))


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
