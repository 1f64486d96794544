"""Where pruning cannot run: a reported skip and the unpruned answer, never a crash or a wrong answer.

Both engines load `tests/vllm_site` in every process: one resolves CPU_ATTN to a backend the
plugin has no compaction support for (named CUSTOM, same kernels); the other reports a vLLM
version the plugin does not support, in a plain vLLM server that never asked for AIM.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aim_vllm.core.schedule import AimSchedule
from tests.engine import servers
from tests.engine.client import Media, aim_kwargs, assert_matches_reference, chat, video_item

QUESTION = "What colour is the circle?"


@pytest.fixture(scope="module")
def video() -> Media:
    return video_item(21, 4)


def _log(server: servers.Server) -> str:
    return Path(server.replica.log_path).read_text()


def test_backend_without_compaction_skips_pruning_and_answers_unpruned(
    tiny_model_dir, reference, video, tmp_path
) -> None:
    """Pruning is reported skipped with the backend's name, merging still applies, the answer is
    the merge-only reference's; the worker said so once at start-up. A budget level is solved with
    merging alone there, so it stays within its budget (`usage.aim.budget_met`)."""
    env = servers.with_test_site(AIM_TEST_UNLISTED_BACKEND="1")
    server = servers.start(tiny_model_dir, tmp_path / "log.txt", env=env)
    try:
        schedule = AimSchedule(0.5, (1, 4))
        response = chat(server, [video], QUESTION, aim_kwargs(schedule), max_tokens=6)
        aim = response["usage"]["aim"]
        assert aim["pruning"].startswith("skipped: attention backend CUSTOM cannot rebuild metadata")
        assert aim["visual_tokens_merged"] < aim["visual_tokens_in"]
        assert_matches_reference(reference, response, [video], AimSchedule(0.5))
        assert _log(server).count("pruning is off in this engine") == 1
        budget = chat(server, [video], QUESTION, {"aim_budget": 0.3}, max_tokens=1)["usage"]["aim"]
        assert budget["prune_layers"] is None and budget["merge_ratio"] < 1.0
        assert (budget["budget"], budget["budget_met"]) == (0.3, True) and budget["flops_ratio"] <= 0.3
    finally:
        server.stop()


def test_plain_vllm_keeps_working_when_the_plugin_does_not_support_its_version(
    tiny_model_dir, aim_engine, video, tmp_path
) -> None:
    """The plugin is installed and enabled but steps aside: stock vLLM answers as plain vLLM does."""
    env = servers.with_test_site(AIM_TEST_VLLM_VERSION="0.99.0", AIM_VLLM_DISABLE=None)
    plain = servers.start(tiny_model_dir, tmp_path / "log.txt", plain=True, env=env)
    try:
        response = chat(plain, [video], QUESTION, max_tokens=6)
    finally:
        plain.stop()
    expected = chat(aim_engine, [video], QUESTION, max_tokens=6)  # AIM off == plain vLLM (test_merging)
    assert response["choices"][0]["token_ids"] == expected["choices"][0]["token_ids"]
    assert "aim" not in response["usage"]
    assert "aim-vllm: not loaded, vLLM runs without AIM" in _log(plain)
