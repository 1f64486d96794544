"""AIM off against stock vLLM (plugin disabled) on the same model: the same prompt, greedy tokens
and logprobs, bit for bit (DEVELOPERS.md: AIM off equals plain vLLM)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tests.engine import servers
from tests.engine.client import Media, chat

# AIM off spelled every way a request can: no AIM keys, merge ratio 1.0, the `off` preset.
OFF_SPELLINGS: tuple[dict[str, Any] | None, ...] = (None, {"aim_merge_ratio": 1.0}, {"aim_preset": "off"})


def assert_same_answer(ours: dict, stock: dict) -> None:
    """Two chat responses with the same prompt ids, generated ids and logprobs."""
    assert ours["prompt_token_ids"] == stock["prompt_token_ids"]
    assert ours["choices"][0]["token_ids"] == stock["choices"][0]["token_ids"]
    assert ours["choices"][0]["logprobs"] == stock["choices"][0]["logprobs"]


def assert_off_matches_stock(
    engine,
    model_dir: Path,
    items: Sequence[Media],
    question: str,
    log: Path,
    spellings: Iterable[dict[str, Any] | None] = OFF_SPELLINGS,
) -> None:
    """Start stock vLLM on `model_dir` (eager, as the per-model engines), ask it `question` about
    each item alone, stop it, then ask `engine` the same with AIM off in each of `spellings`."""
    plain = servers.start(model_dir, log, plain=True)
    try:
        expected = [chat(plain, [item], question) for item in items]
    finally:
        plain.stop()
    for aim in spellings:
        for item, stock in zip(items, expected, strict=True):
            assert_same_answer(chat(engine, [item], question, aim), stock)
