"""The FLOPs tables' published shapes are those of the checkpoints the builders write."""

import importlib

import pytest

from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.flops import LLMShape
from aim_vllm.model_builders import BUILDERS


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_each_architecture_is_its_builders_published_config(name: str) -> None:
    # "qwen2.5-vl-3b" -> builder "qwen2.5-vl", size "3b"; "qwen3-vl-30b-a3b" -> "qwen3-vl", "30b-a3b"
    arch = next(a for a in BUILDERS if name.startswith(f"{a}-") and name[len(a) + 1 :][0].isdigit())
    size = name[len(arch) + 1 :]
    builder = importlib.import_module(BUILDERS[arch])
    assert LLMShape.from_hf_config(builder.TEXT_CONFIGS[size]) == ARCHITECTURES[name].llm
