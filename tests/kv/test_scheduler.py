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


def _text_request(req_id: str, prompt: int, first: int = 1):
    from vllm import SamplingParams
    from vllm.v1.request import Request

    params = SamplingParams(max_tokens=8, ignore_eos=True)
    tokens = list(range(first, first + prompt))
    return Request(req_id, tokens, params, None, block_hasher=_block_hasher())


def _block_hasher():
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash

    init_none_hash(sha256)
    return get_request_block_hasher(BLOCK, sha256)


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


# -- pruned requests under vLLM's defaults: chunked prefill and prefix caching on ------------------

CHUNK = 256  # the step budget every other request is chunked at (vLLM's --max-num-scheduled-tokens)
STEP = 2048  # the most one step may hold (--max-num-batched-tokens)


@pytest.fixture
def chunked_config(tiny_model_dir):
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig

    scheduler = SchedulerConfig.default_factory()
    scheduler.max_num_batched_tokens, scheduler.max_model_len = STEP, 2 * STEP
    scheduler.max_num_scheduled_tokens = CHUNK
    scheduler.enable_chunked_prefill = True
    model = ModelConfig(model=str(tiny_model_dir), dtype="float32", max_model_len=2 * STEP)
    config = VllmConfig(
        model_config=model,
        scheduler_config=scheduler,
        cache_config=CacheConfig(block_size=BLOCK, enable_prefix_caching=True),
    )
    config.cache_config.num_gpu_blocks = 5000
    return config


def _caching_scheduler(config):
    from vllm.v1.kv_cache_interface import KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    from aim_vllm.compat import FullAttentionSpec
    from aim_vllm.kv.scheduler import AimScheduler
    from aim_vllm.kv.spec import stage_spec

    base = FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=8, dtype=torch.float32)
    groups = [KVCacheGroupSpec([f"layer.{i}"], stage_spec(base, i, LAYERS)) for i in range(LAYERS)]
    kv_cache = KVCacheConfig(num_blocks=5000, kv_cache_tensors=[], kv_cache_groups=groups)
    return AimScheduler(
        vllm_config=config,
        kv_cache_config=kv_cache,
        structured_output_manager=StructuredOutputManager(config),
        block_size=BLOCK,
    )


def _video_request(req_id: str, prompt: int, schedule, max_tokens: int = 8, logprobs=None):
    """A request with one 500-token video at offset 10 (`schedule`: its AIM parameters; None: off)."""
    from types import SimpleNamespace

    from vllm import SamplingParams
    from vllm.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange
    from vllm.v1.request import Request

    from aim_vllm.core.item_params import ItemParams, field_name

    data = {}
    if schedule is not None:
        data = {field_name("video"): SimpleNamespace(data=ItemParams(schedule, 2000).to_tensor())}
    feature = MultiModalFeatureSpec(
        data=data, modality="video", identifier=f"video-{schedule}", mm_position=PlaceholderRange(10, 500)
    )
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, prompt_logprobs=logprobs)
    tokens = [7] * 10 + [3] * 500 + list(range(100, 100 + prompt - 510))
    return Request(req_id, tokens, params, None, mm_features=[feature], block_hasher=_block_hasher())


def test_verdicts_travel_in_the_request(chunked_config) -> None:
    """WHOLE for a pruning request that fits a step; why not for one that cannot; nothing for the
    rest. A WHOLE request never reads the prefix cache."""
    from aim_vllm.core.schedule import AimSchedule
    from aim_vllm.kv.scheduler import keeps_whole
    from aim_vllm.pruning.state import PREFILL_KEY, WHOLE

    scheduler = _caching_scheduler(chunked_config)
    requests = {
        "prunes": _video_request("prunes", 600, AimSchedule(0.5, (1, 4))),
        "too-long": _video_request("too-long", 600, AimSchedule(0.5, (1, 4)), max_tokens=STEP),
        "merges": _video_request("merges", 600, AimSchedule(0.5)),
        "logprobs": _video_request("logprobs", 600, AimSchedule(0.5, (1, 4)), logprobs=1),
    }
    for request in requests.values():
        scheduler.add_request(request)
    verdicts = {k: (r.sampling_params.extra_args or {}).get(PREFILL_KEY) for k, r in requests.items()}
    assert verdicts["prunes"] == WHOLE and keeps_whole(requests["prunes"])
    assert verdicts["too-long"].startswith("skipped: its prompt with max_tokens (2648 tokens) exceeds")
    assert verdicts["merges"] is None and verdicts["logprobs"] is None
    assert [r.skip_reading_prefix_cache for r in requests.values()] == [True, False, False, True]


def test_a_pruning_prefill_is_never_split(chunked_config) -> None:
    """Other prefills are chunked at the step budget as in stock vLLM; a pruning prefill longer
    than it gets one step of up to --max-num-batched-tokens, and waits rather than be cut."""
    from aim_vllm.core.schedule import AimSchedule

    scheduler = _caching_scheduler(chunked_config)
    scheduler.add_request(_text_request("text", 600))
    assert scheduler.schedule().num_scheduled_tokens == {"text": CHUNK}  # stock chunking
    scheduler.add_request(_video_request("prunes", 700, AimSchedule(0.5, (1, 4))))
    # heads the queue and does not fit the chunk: this step may hold it whole, after the running prefill
    assert scheduler.schedule().num_scheduled_tokens == {"text": 600 - CHUNK, "prunes": 700}
    assert scheduler.max_num_scheduled_tokens == CHUNK  # the lift lasts one step
    scheduler.add_request(_text_request("long", STEP - 48, first=5000))  # nothing cached
    assert scheduler.schedule().num_scheduled_tokens == {"long": CHUNK}
    scheduler.add_request(_video_request("waits", 700, AimSchedule(0.5, (1, 4))))
    # 1,744 tokens of the running prefill leave 304 of the step: the pruning prefill waits whole
    assert scheduler.schedule().num_scheduled_tokens == {"long": STEP - 48 - CHUNK}
    assert scheduler.schedule().num_scheduled_tokens == {"waits": 700}
    scheduler.add_request(_video_request("merges", 700, AimSchedule(0.5)))
    assert scheduler.schedule().num_scheduled_tokens == {"merges": CHUNK}


def test_pruned_requests_neither_read_nor_leave_cached_blocks(chunked_config) -> None:
    """A merge-only prompt is cached and hit by its repeat; a pruned one with the same tokens is
    not cached, so a request that may read the cache finds none of its blocks."""
    from aim_vllm.core.schedule import AimSchedule

    scheduler = _caching_scheduler(chunked_config)
    manager = scheduler.kv_cache_manager
    pruned = AimSchedule(0.5, (1, 4))
    scheduler.add_request(_video_request("pruned", 600, pruned))
    assert scheduler.schedule().num_scheduled_tokens == {"pruned": 600}
    reader = _video_request("reader", 600, pruned, max_tokens=STEP)  # same tokens, may read: unpruned
    assert manager.get_computed_blocks(reader)[1] == 0
    scheduler.add_request(_video_request("merged", 600, AimSchedule(0.5)))
    assert scheduler.schedule().num_scheduled_tokens == {"merged": CHUNK}
    assert scheduler.schedule().num_scheduled_tokens == {"merged": CHUNK}
    scheduler.schedule()
    assert manager.get_computed_blocks(_video_request("repeat", 600, AimSchedule(0.5)))[1] == 592


def test_items_aim_parameters_survive_vllms_stripping_of_cached_items(chunked_config) -> None:
    """vLLM sends the worker no data for an item a prefix cache hit covers
    (`strip_covered_mm_data`); the copy the scheduler wrote into the request gives the worker the
    same AIM parameters (usage of a cached merge-only request, verdicts of every request)."""
    from dataclasses import replace

    from vllm.multimodal.utils import strip_covered_mm_data

    from aim_vllm.core.schedule import AimSchedule
    from aim_vllm.pruning.runner_context import request_step

    scheduler = _caching_scheduler(chunked_config)
    request = _video_request("merged", 600, AimSchedule(0.5))
    scheduler.add_request(request)
    whole = request_step("merged", 600, request.mm_features, request.sampling_params)
    stripped = [replace(f, data=None) for f in request.mm_features]
    assert strip_covered_mm_data(request.mm_features, 600)[0].data is None  # what vLLM does
    cached = request_step("merged", 600, stripped, request.sampling_params)
    assert cached == whole and cached.schedule == AimSchedule(0.5) and cached.visual_tokens_in == 2000
    assert request_step("merged", 600, stripped, None).schedule is None  # without the copy: unknown


def test_the_prefill_records_travel_with_the_step_that_starts_them(chunked_config) -> None:
    """One decider: the output of the step that starts a prefill carries the record its blocks
    were allocated by (`RECORDS_ATTR`); later steps carry none for it."""
    from aim_vllm.core.schedule import AimSchedule
    from aim_vllm.pruning.state import RECORDS_ATTR, PruneRecord

    scheduler = _caching_scheduler(chunked_config)
    scheduler.add_request(_video_request("prunes", 600, AimSchedule(0.5, (1, 4))))
    scheduler.add_request(_video_request("merges", 600, AimSchedule(0.5)))
    first = scheduler.schedule()
    records = getattr(first, RECORDS_ATTR)
    assert set(records) == set(first.num_scheduled_tokens) == {"prunes", "merges"}
    assert records["prunes"].pruned and not records["merges"].pruned
    managers = scheduler.kv_cache_manager.coordinator.single_type_managers
    held = [len(m.req_to_blocks["prunes"]) for m in managers]
    stored = [600 - missing for missing in records["prunes"].missing]  # each group is one layer here
    assert held == [-(-rows // BLOCK) for rows in stored]
    assert records["prunes"].missing == PruneRecord.planned(_step("prunes"), LAYERS).missing
    assert getattr(scheduler.schedule(), RECORDS_ATTR) == {}  # the merge-only prefill goes on: no new record


def _step(req_id: str):
    """The worker's view of a pruning video request (`_video_request`)."""
    from aim_vllm.core.schedule import AimSchedule
    from aim_vllm.pruning.runner_context import request_step

    request = _video_request(req_id, 600, AimSchedule(0.5, (1, 4)))
    return request_step(req_id, 600, request.mm_features, request.sampling_params)
