"""Engine settings under which pruning cannot be exact: each is refused with its own reason."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from aim_vllm.pruning.support import engine_reason


def engine_config(**changes):
    """A stand-in for `VllmConfig` with the fields `engine_reason` reads (defaults: pruning works)."""
    from vllm.config.compilation import CUDAGraphMode

    values = dict(prefix_caching=False, speculative=None, pp=1, cudagraphs=CUDAGraphMode.NONE, v2=False)
    values.update(changes)
    return SimpleNamespace(
        cache_config=SimpleNamespace(enable_prefix_caching=values["prefix_caching"]),
        speculative_config=values["speculative"],
        parallel_config=SimpleNamespace(pipeline_parallel_size=values["pp"]),
        compilation_config=SimpleNamespace(cudagraph_mode=values["cudagraphs"]),
        use_v2_model_runner=values["v2"],
    )


def test_the_aim_engine_defaults_allow_pruning() -> None:
    assert engine_reason(engine_config()) == ""


@pytest.mark.parametrize(
    ("changes", "start"),
    [
        ({"prefix_caching": True}, "prefix caching is enabled"),
        ({"speculative": object()}, "speculative decoding"),
        ({"pp": 2}, "pipeline parallelism"),
        ({"cudagraphs": "FULL_AND_PIECEWISE"}, "CUDA graphs"),
        ({"cudagraphs": "PIECEWISE"}, "CUDA graphs"),
        ({"v2": True}, "Model Runner V2 is not supported yet; set VLLM_USE_V2_MODEL_RUNNER=0"),
    ],
)
def test_each_setting_that_rules_pruning_out_names_itself(changes: dict, start: str) -> None:
    from vllm.config.compilation import CUDAGraphMode

    if "cudagraphs" in changes:
        changes = {"cudagraphs": CUDAGraphMode[changes["cudagraphs"]]}
    assert engine_reason(engine_config(**changes)).startswith(start)
