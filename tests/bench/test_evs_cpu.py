"""bench/evs_cpu: on its PYTHONPATH, vLLM's CPU runner sets `is_multimodal_pruning_enabled` after
`load_model` as the GPU runner does; elsewhere vLLM's runner is untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FIX = Path(__file__).resolve().parents[2] / "bench" / "evs_cpu"
PROBE = """
import sys
from types import SimpleNamespace
from vllm.v1.worker import cpu_model_runner

print(cpu_model_runner.CPUModelRunner.load_model.__name__)
if "sitecustomize" in sys.modules and hasattr(sys.modules["sitecustomize"], "enable_pruning_as_gpu_runner"):
    enable = sys.modules["sitecustomize"].enable_pruning_as_gpu_runner
    evs_model = SimpleNamespace(supports_multimodal_pruning=True)  # e.g. Qwen2.5-VL
    for model, rate in ((evs_model, 0.75), (evs_model, None), (object(), 0.75)):
        mm = SimpleNamespace(is_multimodal_pruning_enabled=lambda rate=rate: rate is not None)
        config = SimpleNamespace(multimodal_config=mm)
        runner = SimpleNamespace(model_config=config, get_model=lambda m=model: m)
        enable(runner)
        print(runner.is_multimodal_pruning_enabled)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("with_fix", [True, False], ids=["fix", "stock"])
def test_the_cpu_runner_switches_evs_on_only_with_the_fix(with_fix: bool) -> None:
    paths = [str(FIX)] * with_fix + [os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    if with_fix:  # pruning on only for a model that supports it, with a rate set
        assert lines[-4:] == ["load_model_with_evs", "True", "False", "False"]
    else:
        assert lines[-1] == "load_model"


QWEN3_PROBE = """
from transformers import Qwen3VLProcessor
from vllm.model_executor.models.qwen3_vl import Qwen3VLMultiModalProcessor

print(Qwen3VLMultiModalProcessor._expands_only_video_token(Qwen3VLProcessor.__new__(Qwen3VLProcessor)))
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("with_fix", [True, False], ids=["fix", "stock"])
def test_qwen3_vl_videos_replace_the_whole_marker_triple_only_with_the_fix(with_fix: bool) -> None:
    """transformers 5.x's Qwen3-VL processor expands the bare video token (the outer markers stay),
    which vLLM 0.32's EVS/VidCom2 position recompute misreads; the fix expands the whole triple."""
    paths = [str(FIX)] * with_fix + [os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, "-c", QWEN3_PROBE]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(not with_fix)
