"""On a vLLM the plugin does not support, it steps aside: vLLM untouched, `aim-vllm engine` refuses.

vLLM loads the `vllm.general_plugins` entry point in every process of the environment, also in
processes that never asked for AIM; a plugin that raised there would take them all down. Each
check runs in a fresh interpreter whose vLLM reports another version (`tests/vllm_site`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SITE = Path(__file__).resolve().parents[1] / "vllm_site"
UNSUPPORTED = "0.99.0"


def _run(code_or_args: list[str], version: str | None = UNSUPPORTED) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")])),
    }
    env.pop("AIM_VLLM_DISABLE", None)
    if version:
        env["AIM_TEST_VLLM_VERSION"] = version
    return subprocess.run(
        [sys.executable, *code_or_args], env=env, capture_output=True, text=True, timeout=300
    )


PROBE = """
import json, vllm
from vllm import ModelRegistry
from vllm.plugins import load_general_plugins
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
load_general_plugins()
info = ModelRegistry.models["LlavaOnevisionForConditionalGeneration"]
print(json.dumps({
    "version": vllm.__version__,
    "model": getattr(info, "module_name", "") + ":" + getattr(info, "class_name", ""),
    "runner_patched": getattr(GPUModelRunner._model_forward, "_aim_vllm_patched", False),
}))
"""


def _probe(version: str | None) -> tuple[dict, str]:
    result = _run(["-c", PROBE], version)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_unsupported_vllm_is_left_untouched_with_one_clear_error() -> None:
    """No model class registered, no runner patched, one error line naming both versions."""
    state, log = _probe(UNSUPPORTED)
    assert state["version"] == UNSUPPORTED
    assert state["model"].startswith("vllm.model_executor.models.llava_onevision")
    assert state["runner_patched"] is False
    errors = [line for line in log.splitlines() if "aim-vllm: not loaded" in line]
    assert len(errors) == 1 and "0.32.x" in errors[0] and UNSUPPORTED in errors[0], log[-2000:]


def test_supported_vllm_gets_the_plugin() -> None:
    """The same probe on the real vLLM: AIM's class is registered and the runner patched."""
    state, _ = _probe(None)
    assert state["model"].startswith("aim_vllm.models.llava_onevision")
    assert state["runner_patched"] is True


def test_engine_command_refuses_with_one_line_and_exit_code_1() -> None:
    result = _run(["-m", "aim_vllm.cli", "engine", "--model", "/nonexistent"])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"aim-vllm engine: error: aim-vllm supports vLLM 0.32.x, found {UNSUPPORTED}" in result.stderr
