"""`AimScheduler` is vLLM's scheduler of the engine's kind: the asynchronous one when the engine
schedules asynchronously (vLLM's GPU default), with the AIM stage managers bound either way."""

from __future__ import annotations

import pytest
import torch

BLOCK = 16
LAYERS = 6


@pytest.fixture(scope="module")
def vllm_config(tiny_model_dir):
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig

    scheduler = SchedulerConfig.default_factory()
    scheduler.max_num_batched_tokens = scheduler.max_model_len = 2048
    model = ModelConfig(model=str(tiny_model_dir), dtype="float32", max_model_len=2048)
    config = VllmConfig(
        model_config=model,
        scheduler_config=scheduler,
        cache_config=CacheConfig(block_size=BLOCK, enable_prefix_caching=False),
    )
    config.cache_config.num_gpu_blocks = 100
    return config


def _scheduler(config, async_scheduling: bool):
    from vllm.v1.kv_cache_interface import KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    from aim_vllm.compat import FullAttentionSpec
    from aim_vllm.kv.scheduler import AimScheduler
    from aim_vllm.kv.spec import stage_spec

    config.scheduler_config.async_scheduling = async_scheduling  # the CPU platform turns it off
    base = FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=8, dtype=torch.float32)
    groups = [KVCacheGroupSpec([f"layer.{i}"], stage_spec(base, i, LAYERS)) for i in range(LAYERS)]
    kv_cache = KVCacheConfig(num_blocks=100, kv_cache_tensors=[], kv_cache_groups=groups)
    return AimScheduler(
        vllm_config=config,
        kv_cache_config=kv_cache,
        structured_output_manager=StructuredOutputManager(config),
        block_size=BLOCK,
    )


def _text_request(req_id: str, prompt: int):
    from vllm import SamplingParams
    from vllm.v1.request import Request

    params = SamplingParams(max_tokens=8, ignore_eos=True)
    return Request(req_id, list(range(1, prompt + 1)), params, None)


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_the_scheduler_matches_the_engine_and_binds_the_stage_managers(vllm_config, async_scheduling) -> None:
    from aim_vllm.compat import AsyncScheduler
    from aim_vllm.kv.manager import AimManager
    from aim_vllm.kv.scheduler import AimScheduler

    scheduler = _scheduler(vllm_config, async_scheduling)
    assert isinstance(scheduler, AimScheduler)
    assert isinstance(scheduler, AsyncScheduler) is async_scheduling
    managers = scheduler.kv_cache_manager.coordinator.single_type_managers
    assert len(managers) == LAYERS and all(isinstance(m, AimManager) for m in managers)
    assert all(m.plans is scheduler.aim_kv_plans for m in managers)

    scheduler.add_request(_text_request("a", 40))
    first = scheduler.schedule()
    assert first.num_scheduled_tokens == {"a": 40}
    second = scheduler.schedule()  # before the first step's output arrives
    # asynchronous: the decode is scheduled one step ahead (an output placeholder); synchronous: it waits
    assert second.num_scheduled_tokens == ({"a": 1} if async_scheduling else {})
    blocks = [len(m.req_to_blocks["a"]) for m in managers]
    assert blocks == [-(-(40 + async_scheduling) // BLOCK)] * LAYERS  # unpruned: every token, every group
