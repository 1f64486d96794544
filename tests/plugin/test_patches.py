"""The runner patch: the step context for AIM models only, and no hang when a rank's forward fails."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from aim_vllm import patches
from aim_vllm.pruning import runner_context


class _Exited(Exception):
    pass


def _runner(model, tp: int = 1, pp: int = 1):
    config = SimpleNamespace(
        parallel_config=SimpleNamespace(tensor_parallel_size=tp, pipeline_parallel_size=pp)
    )
    # two KV-cache groups (vLLM `MultiGroupBlockTable`): layer "a" in group 0, "b" in group 1
    tables = [SimpleNamespace(block_size=16, num_blocks_per_row=np.array([3, 5, 0])) for _ in range(2)]
    tables[1].num_blocks_per_row = np.array([1, 2, 0])
    batch = SimpleNamespace(
        req_ids=["r0", "r1"], num_reqs=2, block_table=SimpleNamespace(block_tables=tables)
    )
    groups = [SimpleNamespace(layer_names=["a"]), SimpleNamespace(layer_names=["b"])]
    requests = {"r0": _state(), "r1": _state()}
    return SimpleNamespace(
        get_model=lambda: model,
        vllm_config=config,
        input_batch=batch,
        requests=requests,
        kv_cache_config=SimpleNamespace(kv_cache_groups=groups),
    )


def _state():
    return SimpleNamespace(num_prompt_tokens=10, mm_features=[], sampling_params=None)


@pytest.fixture
def exits(monkeypatch) -> list[int]:
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise _Exited

    monkeypatch.setattr(runner_context.os, "_exit", fake_exit)
    return codes


def _wrapped(behaviour):
    return patches._with_step_context(lambda runner, *args, **kwargs: behaviour(kwargs))


def test_only_aim_models_get_the_step_context() -> None:
    forward = _wrapped(lambda kwargs: kwargs)
    step = forward(_runner(SimpleNamespace(aim_accepts_step=True)))["aim_step"]
    assert [req.req_id for req in step.requests] == ["r0", "r1"]
    sizes, held = step.kv.per_layer(["b", "a"])  # blocks held per layer and request
    assert sizes.tolist() == [16, 16] and held.tolist() == [[1, 2], [3, 5]]
    assert forward(_runner(SimpleNamespace())) == {}


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)])
def test_a_failing_rank_exits_so_its_peers_cannot_hang(exits, tp: int, pp: int) -> None:
    """With several ranks, a forward that raises ends the worker (vLLM then stops the engine)."""

    def fail(kwargs):
        raise RuntimeError("boom")

    with pytest.raises(_Exited):
        _wrapped(fail)(_runner(SimpleNamespace(aim_accepts_step=True), tp, pp))
    assert exits == [1]


def test_a_single_rank_raises_as_usual(exits) -> None:
    def fail(kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _wrapped(fail)(_runner(SimpleNamespace(aim_accepts_step=True)))
    assert exits == []
