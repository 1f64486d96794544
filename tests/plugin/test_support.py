"""Engine settings under which pruning cannot be exact: each is refused with its own reason; vLLM's
own defaults (prefix caching, chunked prefill, compilation, piecewise CUDA graphs) are not among them
when AIM's scheduler runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from aim_vllm.pruning.support import AIM_SCHEDULER, engine_reason


def engine_config(**changes):
    """A stand-in for `VllmConfig` with the fields `engine_reason` reads (defaults: vLLM's own, with
    AIM's scheduler)."""
    from vllm.config import SchedulerConfig
    from vllm.config.compilation import CUDAGraphMode

    values = dict(
        prefix_caching=True,
        speculative=None,
        pp=1,
        cudagraphs=CUDAGraphMode.NONE,
        v2=False,
        scheduler=AIM_SCHEDULER,
    )
    values.update(changes)
    scheduler = SchedulerConfig.default_factory()
    scheduler.scheduler_cls = values["scheduler"]
    return SimpleNamespace(
        cache_config=SimpleNamespace(enable_prefix_caching=values["prefix_caching"]),
        scheduler_config=scheduler,
        speculative_config=values["speculative"],
        parallel_config=SimpleNamespace(pipeline_parallel_size=values["pp"]),
        compilation_config=SimpleNamespace(cudagraph_mode=values["cudagraphs"]),
        use_v2_model_runner=values["v2"],
    )


@pytest.mark.parametrize(
    "changes",
    [{}, {"cudagraphs": "PIECEWISE"}, {"prefix_caching": False, "scheduler": None}],
    ids=["vllm-defaults", "piecewise-cuda-graphs", "no-prefix-caching-any-scheduler"],
)
def test_settings_that_allow_pruning(changes: dict) -> None:
    from vllm.config.compilation import CUDAGraphMode

    if "cudagraphs" in changes:
        changes = {**changes, "cudagraphs": CUDAGraphMode[changes["cudagraphs"]]}
    assert engine_reason(engine_config(**changes)) == ""


@pytest.mark.parametrize(
    ("changes", "start"),
    [
        ({"scheduler": None}, "prefix caching is enabled and the scheduler is not AIM's"),
        ({"speculative": object()}, "speculative decoding"),
        ({"pp": 2}, "pipeline parallelism"),
        ({"cudagraphs": "FULL_AND_PIECEWISE"}, "full CUDA graphs"),
        ({"cudagraphs": "FULL_DECODE_ONLY"}, "full CUDA graphs"),
        ({"v2": True}, "Model Runner V2 is not supported yet; set VLLM_USE_V2_MODEL_RUNNER=0"),
    ],
)
def test_each_setting_that_rules_pruning_out_names_itself(changes: dict, start: str) -> None:
    from vllm.config.compilation import CUDAGraphMode

    if "cudagraphs" in changes:
        changes = {"cudagraphs": CUDAGraphMode[changes["cudagraphs"]]}
    assert engine_reason(engine_config(**changes)).startswith(start)
