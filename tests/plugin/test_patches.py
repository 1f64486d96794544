"""The runner patch: the step context for AIM models only, and no hang when a rank's forward fails."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from aim_vllm import patches
from aim_vllm.pruning import runner_context


class _Exited(Exception):
    pass


def _runner(model, tp: int = 1, pp: int = 1):
    config = SimpleNamespace(
        parallel_config=SimpleNamespace(tensor_parallel_size=tp, pipeline_parallel_size=pp)
    )
    batch = SimpleNamespace(req_ids=[], num_reqs=0)
    return SimpleNamespace(get_model=lambda: model, vllm_config=config, input_batch=batch, requests={})


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
    assert "aim_step" in forward(_runner(SimpleNamespace(aim_accepts_step=True)))
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
