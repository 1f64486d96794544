"""Qwen3-VL engine fixtures, one source for the dense, ViT-merging and MoE modules.

Checkpoints, references and media are per session. Each engine is module-scoped and used by one
module, so it starts once per session and stops (freeing its memory on the shared cores) when
that module ends; a module that wants another's engine should move it to session scope.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aim_vllm.reference.qwen3_vl import Qwen3VLReference
from aim_vllm.reference.qwen3_vl_moe import Qwen3VLMoeReference
from tests.engine import servers
from tests.engine.client import Media, image_item, video_item
from tests.engine.qwen3.checkpoints import deeper_checkpoint, sharpen_vit


def _serve(model_dir: Path, tmp_path_factory, name: str, **kwargs) -> Iterator[servers.Server]:
    server = servers.start(model_dir, tmp_path_factory.mktemp(name) / "log.txt", **kwargs)
    yield server
    server.stop()


def _serve_tensor_parallel(model_dir: Path, tmp_path_factory, name: str) -> Iterator[servers.Server]:
    server = servers.start_tensor_parallel(model_dir, tmp_path_factory.mktemp(name) / "log.txt")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def image() -> Media:
    return image_item(0)


@pytest.fixture(scope="session")
def video() -> Media:
    return video_item(1, 4)


@pytest.fixture(scope="session")
def qwen3_model_dir() -> Path:
    """The tiny Qwen3-VL (4 LLM layers, DeepStack after layers 0-2)."""
    from aim_vllm.model_builders import default_model_dir

    return default_model_dir("qwen3-vl")


@pytest.fixture(scope="session")
def qwen3_deep_dir(qwen3_model_dir, tmp_path_factory) -> Path:
    """The 6-layer copy (`deeper_checkpoint`) the pruning tests use."""
    return deeper_checkpoint(qwen3_model_dir, tmp_path_factory.mktemp("qwen3-deep") / "model")


@pytest.fixture(scope="session")
def qwen3_sharp_dir(qwen3_model_dir, tmp_path_factory) -> Path:
    """A second 6-layer copy, its ViT's attention sharpened (`sharpen_vit`): ViT merging's checkpoint."""
    target = tmp_path_factory.mktemp("qwen3-sharp") / "model"
    return sharpen_vit(deeper_checkpoint(qwen3_model_dir, target))


@pytest.fixture(scope="session")
def moe_dir(tmp_path_factory) -> Path:
    """The tiny Qwen3-VL-MoE (8 experts of 32, 2 per token) deepened to 6 LLM layers."""
    from aim_vllm.model_builders import default_model_dir

    source = default_model_dir("qwen3-vl", "tiny-moe")
    return deeper_checkpoint(source, tmp_path_factory.mktemp("moe") / "model")


@pytest.fixture(scope="session")
def qwen3_reference(qwen3_model_dir) -> Qwen3VLReference:
    return Qwen3VLReference(qwen3_model_dir)


@pytest.fixture(scope="session")
def qwen3_deep_reference(qwen3_deep_dir) -> Qwen3VLReference:
    return Qwen3VLReference(qwen3_deep_dir)


@pytest.fixture(scope="session")
def qwen3_sharp_reference(qwen3_sharp_dir) -> Qwen3VLReference:
    return Qwen3VLReference(qwen3_sharp_dir)


@pytest.fixture(scope="session")
def moe_reference(moe_dir) -> Qwen3VLMoeReference:
    return Qwen3VLMoeReference(moe_dir)


@pytest.fixture(scope="module")
def qwen3_engine(qwen3_model_dir, tmp_path_factory) -> Iterator[servers.Server]:
    yield from _serve(qwen3_model_dir, tmp_path_factory, "qwen3-engine")


@pytest.fixture(scope="module")
def qwen3_deep_engine(qwen3_deep_dir, tmp_path_factory) -> Iterator[servers.Server]:
    """The 6-layer engine, compiled (vLLM's torch.compile as by default; the other per-model
    engines run eager): a pruned request's prefill runs AIM's eager layer loop and its decodes
    vLLM's compiled forward with each layer's compacted metadata installed (docs/design.md,
    "Compiled forwards"; per-layer KV groups), the path a deployed Qwen3-VL takes, with DeepStack."""
    yield from _serve(qwen3_deep_dir, tmp_path_factory, "qwen3-deep-engine", compiled=True)


@pytest.fixture(scope="module")
def qwen3_deep_tp_engine(qwen3_deep_dir, tmp_path_factory) -> Iterator[servers.Server]:
    """The 6-layer copy at TP=2 (one core per rank), shared by the merging and pruning TP tests."""
    yield from _serve_tensor_parallel(qwen3_deep_dir, tmp_path_factory, "qwen3-deep-tp")


@pytest.fixture(scope="module")
def qwen3_sharp_engine(qwen3_sharp_dir, tmp_path_factory) -> Iterator[servers.Server]:
    yield from _serve(qwen3_sharp_dir, tmp_path_factory, "qwen3-sharp-engine")


@pytest.fixture(scope="module")
def moe_engine(moe_dir, tmp_path_factory) -> Iterator[servers.Server]:
    yield from _serve(moe_dir, tmp_path_factory, "moe-engine")


@pytest.fixture(scope="module")
def moe_tp_engine(moe_dir, tmp_path_factory) -> Iterator[servers.Server]:
    """The 6-layer MoE at TP=2: attention heads and every expert's width split over the ranks."""
    yield from _serve_tensor_parallel(moe_dir, tmp_path_factory, "moe-tp")
