"""`aim-vllm engine`: AIM's defaults for vLLM flags, user flags always win."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aim_vllm.commands.engine import engine_argv, pop_aim_default


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _checkpoint(root: Path, max_positions: int, tokenizer_max: int | None = None) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": max_positions}}))
    if tokenizer_max is not None:
        (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": tokenizer_max}))
    return str(root)


def test_defaults_for_the_embedded_model(tmp_path) -> None:
    """vLLM's own defaults stay: no eager mode, prefix caching and chunked prefill untouched; a
    step may hold a whole prompt (a pruned one), other prefills are chunked at vLLM's budget."""
    model = _checkpoint(tmp_path / "tiny", 32768)
    args = engine_argv(["--port", "9000"], model, chunk_tokens=2048)
    assert _flag(args, "--model") == model
    assert _flag(args, "--dtype") == "float32"
    assert "--trust-request-mm-kwargs" in args
    assert _flag(args, "--scheduler-cls") == "aim_vllm.kv.scheduler.AimScheduler"
    for flag in ("--enforce-eager", "prefix-caching", "chunked-prefill", "--compilation-config"):
        assert not any(flag in arg for arg in args), flag
    assert _flag(args, "--max-num-batched-tokens") == _flag(args, "--max-model-len") == "8192"
    assert _flag(args, "--max-num-scheduled-tokens") == "2048"
    assert _flag(args, "--middleware") == "aim_vllm.usage_middleware.AimUsageMiddleware"


def test_cuda_keeps_compilation_with_piecewise_graphs(tmp_path) -> None:
    model = _checkpoint(tmp_path / "m", 4096)
    args = engine_argv(["--model", model], None, cuda=True)
    assert json.loads(_flag(args, "--compilation-config")) == {"cudagraph_mode": "PIECEWISE"}
    for own in (["-cc.cudagraph_mode=FULL"], ["--compilation-config", "{}"], ["--enforce-eager"]):
        assert "PIECEWISE" not in " ".join(engine_argv(["--model", model, *own], None, cuda=True))


def test_chunk_budget_only_where_vllm_would_chunk(tmp_path) -> None:
    """No chunk budget with chunked prefill off (vLLM would refuse any longer prompt) or with the
    user's own --max-num-batched-tokens; never above the length."""
    model = _checkpoint(tmp_path / "m", 1024)
    assert _flag(engine_argv(["--model", model], None, 2048), "--max-num-scheduled-tokens") == "1024"
    off = engine_argv(["--model", model, "--no-enable-chunked-prefill"], None, 2048)
    assert "--max-num-scheduled-tokens" not in off
    own = engine_argv(["--model", model, "--max-num-batched-tokens", "512"], None, 2048)
    assert "--max-num-scheduled-tokens" not in own and own.count("--max-num-batched-tokens") == 1


@pytest.mark.parametrize(
    ("max_positions", "tokenizer_max", "expected"),
    [(4096, None, "4096"), (128000, None, "8192"), (32768, 2048, "2048"), (4096, 10**30, "4096")],
)
def test_length_follows_the_checkpoint(tmp_path, max_positions, tokenizer_max, expected) -> None:
    """min(8192, the checkpoint's limit as vLLM derives it), and the step budget to match: a
    4096-position LLaVA-1.5 starts with no extra flags."""
    model = _checkpoint(tmp_path / "m", max_positions, tokenizer_max)
    args = engine_argv(["--model", model], None)
    assert _flag(args, "--max-model-len") == _flag(args, "--max-num-batched-tokens") == expected


def test_a_model_that_is_not_a_local_checkpoint_gets_vllms_own_length() -> None:
    args = engine_argv(["--model", "org/some-hub-model"], None, 2048)
    assert "--max-model-len" not in args and "--max-num-batched-tokens" not in args
    assert "--max-num-scheduled-tokens" not in args  # vLLM's own budget, for every request


def test_user_flags_win(tmp_path) -> None:
    model = _checkpoint(tmp_path / "m", 32768)
    args = engine_argv(
        ["--model", model, "--no-enable-prefix-caching", "--max-model-len=4096", "--dtype", "bfloat16"],
        None,
    )
    assert args.count("--no-enable-prefix-caching") == 1
    assert args.count("--dtype") == 1
    assert _flag(args, "--max-num-batched-tokens") == "4096"


def test_aim_default_flag_is_removed() -> None:
    assert pop_aim_default(["--aim-default", "balanced", "--port", "1"]) == (["--port", "1"], "balanced")
    assert pop_aim_default(["--aim-default=budget:0.2"]) == ([], "budget:0.2")
    assert pop_aim_default(["--port", "1"]) == (["--port", "1"], None)


def _engine(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AIM_VLLM_DEFAULT"}
    command = [sys.executable, "-m", "aim_vllm.cli", "engine", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("level", ["turbo", "merge:0.25+prune:3-5", "budget:2", ""])
def test_a_bad_default_level_is_one_line_and_exit_code_2(level: str) -> None:
    """The engine checks --aim-default with the one grammar before vLLM starts (no traceback)."""
    result = _engine("--aim-default", level, "--model", "/nonexistent")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith(f"aim-vllm engine: error: --aim-default {level!r}")
    )
