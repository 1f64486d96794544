"""Design C against vLLM 0.32's own grouping and block managers (no engine): one KV-cache group per
stage, and a pruned request's group holds `cdiv(tokens - missing, block_size)` blocks."""

from __future__ import annotations

import copy
import pickle
from types import SimpleNamespace

import pytest
import torch

from aim_vllm.core.item_params import ItemParams, field_name
from aim_vllm.core.schedule import AimSchedule
from aim_vllm.kv.plan import blocks_needed, cdiv, group_missing, prefill_record, stages
from aim_vllm.pruning.state import PruneRecord, RequestStep

BLOCK = 16
LAYERS = 6
SCHEDULE = AimSchedule(0.5, (1, 4))  # prune from layer 1, all visual tokens gone after layer 4


def _base_spec():
    from aim_vllm.compat import FullAttentionSpec

    return FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=8, dtype=torch.float32)


def _vllm_config():
    from vllm.config import VllmConfig

    config = VllmConfig()
    config.cache_config.kv_cache_layout = "LBHNC"  # what the CPU engine core resolves
    return config


def _stage_specs(num_layers: int = LAYERS) -> dict:
    from aim_vllm.kv.spec import stage_spec

    return {f"layer.{i}": stage_spec(_base_spec(), i, num_layers) for i in range(num_layers)}


def test_stages_are_equal_contiguous_and_must_divide() -> None:
    assert stages(6, 1) == [(i, i + 1) for i in range(6)]
    assert stages(6, 3) == [(0, 3), (3, 6)]
    with pytest.raises(ValueError, match="does not divide"):
        stages(6, 4)


def test_a_group_keeps_room_for_its_fullest_layer() -> None:
    missing = [0, 10, 30, 30, 50, 50]
    assert [group_missing(missing, s) for s in stages(6, 2)] == [0, 30, 50]
    assert group_missing([], (0, 1)) == 0
    assert blocks_needed([33, 32, 1], BLOCK) == [3, 2, 1] and cdiv(0, BLOCK) == 0


def test_the_scheduler_decides_as_the_worker_does() -> None:
    """`prefill_record` is the record the decoder plans (whole prompt in one step), and zeros when
    the prompt is split, already partly cached, or asks for prompt logprobs."""
    req = RequestStep("r", 120, SCHEDULE, ((10, 100),), 400)
    assert prefill_record(req, 0, 120, LAYERS).missing == PruneRecord.planned(req, LAYERS).missing
    assert prefill_record(req, 0, 120, LAYERS).missing[-1] == 100  # no visual token after layer 4
    assert prefill_record(req, 0, 60, LAYERS).missing == [0] * LAYERS
    assert prefill_record(req, 16, 104, LAYERS).missing == [0] * LAYERS
    logprobs = RequestStep("r", 120, SCHEDULE, ((10, 100),), 400, skip_reason="skipped: prompt_logprobs")
    assert prefill_record(logprobs, 0, 120, LAYERS).missing == [0] * LAYERS


def test_vllm_makes_one_group_per_stage_and_one_for_plain_layers() -> None:
    from vllm.v1.core.kv_cache_utils import get_kv_cache_groups

    from aim_vllm.kv.spec import AimStageSpec

    groups = get_kv_cache_groups(_vllm_config(), _stage_specs())
    assert [g.layer_names for g in groups] == [[f"layer.{i}"] for i in range(LAYERS)]
    assert all(isinstance(g.kv_cache_spec, AimStageSpec) for g in groups)
    assert [g.kv_cache_spec.aim_layers for g in groups] == stages(LAYERS, 1)
    plain = get_kv_cache_groups(_vllm_config(), {f"layer.{i}": _base_spec() for i in range(LAYERS)})
    assert len(plain) == 1  # Design A: every layer in one group


def test_stage_specs_survive_the_trip_to_the_engine_core() -> None:
    """Worker -> engine core is a pickle; vLLM copies specs; the stage must survive both."""
    spec = _stage_specs()["layer.2"]
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert copy.deepcopy(spec) == spec and copy.deepcopy(spec).aim_layers == (2, 3)
    merged = type(spec).merge([spec, spec])
    assert merged == spec
    with pytest.raises(AssertionError):
        type(spec).merge([spec, _stage_specs()["layer.3"]])


def _request(req_id: str, prompt: int, visual: tuple[int, int], schedule: AimSchedule | None = SCHEDULE):
    """The parts of a vLLM `Request` the plans read."""
    data = None
    if schedule is not None:
        data = {field_name("video"): SimpleNamespace(data=ItemParams(schedule, 4 * visual[1]).to_tensor())}
    position = SimpleNamespace(offset=visual[0], length=visual[1])
    feature = SimpleNamespace(modality="video", mm_position=position, data=data)
    return SimpleNamespace(
        request_id=req_id,
        num_prompt_tokens=prompt,
        num_computed_tokens=0,
        mm_features=[feature],
        sampling_params=SimpleNamespace(prompt_logprobs=None),
    )


def _managers(requests: dict, num_blocks: int = 200):
    from vllm.v1.core.block_pool import BlockPool

    from aim_vllm.kv.manager import AimManager, KVPlans

    pool = BlockPool(num_gpu_blocks=num_blocks, enable_caching=False, hash_block_size=BLOCK)
    plans = KVPlans(requests)
    managers = []
    for group, spec in enumerate(_stage_specs().values()):
        manager = AimManager(spec, pool, False, group, BLOCK)
        manager.plans = plans
        managers.append(manager)
    return pool, managers


def _allocate(managers, req_id: str, computed: int, new: int) -> int:
    """What `KVCacheManager.allocate_slots` asks of each group; returns the blocks it asked for."""
    asked = 0
    for manager in managers:
        asked += manager.get_num_blocks_to_allocate(
            req_id, computed + new, [], computed, computed, computed + new
        )
        manager.allocate_new_blocks(req_id, computed + new, computed + new)
    return asked


def test_a_pruned_request_holds_only_what_each_layer_keeps() -> None:
    """Prefill, 40 decodes, preemption (all freed, decided again on recompute), finish."""
    req = _request("pruned", 120, (10, 100))
    pool, managers = _managers({"pruned": req})
    free = pool.get_num_free_blocks()
    record = PruneRecord.planned(RequestStep("pruned", 120, SCHEDULE, ((10, 100),), 400), LAYERS)
    asked = _allocate(managers, "pruned", 0, 120)
    held = [len(m.req_to_blocks["pruned"]) for m in managers]
    assert held == blocks_needed(record.rows_per_layer, BLOCK) == [8, 8, 6, 4, 2, 2]
    assert asked == sum(held) == free - pool.get_num_free_blocks()
    req.num_computed_tokens = 120
    for step in range(40):  # decodes grow every layer by its new tokens only
        _allocate(managers, "pruned", 120 + step, 1)
        req.num_computed_tokens += 1
    assert [len(m.req_to_blocks["pruned"]) for m in managers] == [
        cdiv(160 - m, BLOCK) for m in record.missing
    ]
    for manager in managers:  # preemption: vLLM frees every group
        manager.free("pruned")
    assert pool.get_num_free_blocks() == free
    req.num_computed_tokens = 0  # recompute of prompt + 40 outputs in one step prunes again
    _allocate(managers, "pruned", 0, 160)
    assert [len(m.req_to_blocks["pruned"]) for m in managers] == [
        cdiv(160 - m, BLOCK) for m in record.missing
    ]


def test_unpruned_split_and_unknown_requests_get_every_token() -> None:
    requests = {
        "off": _request("off", 120, (10, 100), schedule=None),
        "split": _request("split", 120, (10, 100)),
        "unknown": _request("unknown", 120, (10, 100)),
    }
    requests["unknown"].mm_features[0].data = None  # e.g. vLLM's shm cache: no data in the engine core
    _, managers = _managers(requests)
    _allocate(managers, "off", 0, 120)
    _allocate(managers, "unknown", 0, 120)
    _allocate(managers, "split", 0, 64)  # chunked prefill: pruning skipped, as in the worker
    requests["split"].num_computed_tokens = 64
    _allocate(managers, "split", 64, 56)
    for req_id in requests:
        assert [len(m.req_to_blocks[req_id]) for m in managers] == [cdiv(120, BLOCK)] * LAYERS, req_id


def test_admission_counts_the_smaller_footprint() -> None:
    """Of 60 free blocks a pruned 120-token prompt asks 30 (two fit), an unpruned one 6 x 8 = 48."""
    requests = {"a": _request("a", 120, (10, 100)), "b": _request("b", 120, (10, 100))}
    pool, managers = _managers(requests, num_blocks=61)  # block 0 is vLLM's null block
    assert sum(m.get_num_blocks_to_allocate("a", 120, [], 0, 0, 120) for m in managers) == 30
    _allocate(managers, "a", 0, 120)
    assert pool.get_num_free_blocks() == 30
    assert sum(m.get_num_blocks_to_allocate("b", 120, [], 0, 0, 120) for m in managers) == 30
    unpruned = _request("c", 120, (10, 100), schedule=None)
    requests["c"] = unpruned
    assert sum(m.get_num_blocks_to_allocate("c", 120, [], 0, 0, 120) for m in managers) == 48


def _engine(scheduler_cls, hma_off: bool = False, connector=None):
    from vllm.config import SchedulerConfig

    scheduler = SchedulerConfig.default_factory()
    scheduler.scheduler_cls = scheduler_cls
    scheduler.disable_hybrid_kv_cache_manager = hma_off
    return SimpleNamespace(scheduler_config=scheduler, kv_transfer_config=connector)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (lambda: _engine("aim_vllm.kv.scheduler.AimScheduler"), ""),
        (lambda: _engine(None), "the scheduler is not AIM's"),
        (lambda: _engine("vllm.v1.core.sched.scheduler.Scheduler"), "the scheduler is not AIM's"),
        (lambda: _engine("aim_vllm.kv.scheduler.AimScheduler", hma_off=True), "hybrid KV cache manager"),
        (lambda: _engine("aim_vllm.kv.scheduler.AimScheduler", connector=object()), "KV connector"),
    ],
    ids=["aim", "default", "vllm", "hma-off", "connector"],
)
def test_layers_report_stage_specs_only_where_they_can_be_served(config, reason: str) -> None:
    """Elsewhere the layers keep vLLM's spec (one group, Design A) and start-up says why."""
    from aim_vllm.kv.spec import AimStageSpec, install_stage_specs

    layers = [SimpleNamespace(get_kv_cache_spec=lambda _config: _base_spec()) for _ in range(LAYERS)]
    got = install_stage_specs(layers, config())
    assert (got == "") if not reason else (reason in got)
    specs = [layer.get_kv_cache_spec(None) for layer in layers]
    assert all(isinstance(s, AimStageSpec) for s in specs) == (reason == "")
    if not reason:
        assert [s.aim_layers for s in specs] == stages(LAYERS, 1)


@pytest.mark.parametrize(("per_group", "reason"), [("2", ""), ("4", "does not divide"), ("two", "invalid")])
def test_layers_per_group_setting(monkeypatch, per_group: str, reason: str) -> None:
    """`AIM_VLLM_KV_LAYERS_PER_GROUP` trades exactness of the saving for fewer groups; a value that
    does not split the decoder evenly keeps Design A, with the reason."""
    from aim_vllm.kv.spec import LAYERS_PER_GROUP_ENV, install_stage_specs

    monkeypatch.setenv(LAYERS_PER_GROUP_ENV, per_group)
    layers = [SimpleNamespace(get_kv_cache_spec=lambda _config: _base_spec()) for _ in range(LAYERS)]
    got = install_stage_specs(layers, _engine("aim_vllm.kv.scheduler.AimScheduler"))
    assert (got == "") if not reason else (reason in got and LAYERS_PER_GROUP_ENV in got)
    if not reason:
        assert [layer.get_kv_cache_spec(None).aim_layers for layer in layers] == [
            (0, 2), (0, 2), (2, 4), (2, 4), (4, 6), (4, 6)
        ]  # fmt: skip


def test_a_group_of_layers_holds_what_its_fullest_layer_keeps() -> None:
    from vllm.v1.core.block_pool import BlockPool

    from aim_vllm.kv.manager import AimManager, KVPlans
    from aim_vllm.kv.spec import stage_spec

    pool = BlockPool(num_gpu_blocks=100, enable_caching=False, hash_block_size=BLOCK)
    plans = KVPlans({"r": _request("r", 120, (10, 100))})
    managers = []
    for group, (lo, _) in enumerate(stages(LAYERS, 2)):
        manager = AimManager(stage_spec(_base_spec(), lo, LAYERS, 2), pool, False, group, BLOCK)
        manager.plans = plans
        managers.append(manager)
    _allocate(managers, "r", 0, 120)
    missing = PruneRecord.planned(RequestStep("r", 120, SCHEDULE, ((10, 100),), 400), LAYERS).missing
    assert [len(m.req_to_blocks["r"]) for m in managers] == [
        cdiv(120 - min(missing[lo:hi]), BLOCK) for lo, hi in stages(LAYERS, 2)
    ]
