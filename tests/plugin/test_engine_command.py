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


def test_a_positional_model_becomes_the_model_flag(tmp_path) -> None:
    """`aim-vllm engine DIR` as `vllm serve DIR`: vLLM's API server entry would read DIR into
    `model_tag` and serve its own default model, so the model goes to `--model`; no embedded-model
    defaults (dtype, served name) are added."""
    model = _checkpoint(tmp_path / "m", 4096)
    args = engine_argv([model, "--port", "1"], "/embedded")
    assert args[:2] == ["--model", model] and args.count(model) == 1
    assert "/embedded" not in args and "--served-model-name" not in args
    assert _flag(args, "--max-model-len") == "4096"


def _fake_compat(monkeypatch, served: list[list[str]]) -> None:
    """`aim_vllm.compat` without vLLM: a small parser in place of vLLM's, and `run_api_server`
    records the argv it would serve."""
    import argparse
    import types

    import aim_vllm

    def api_server_parser(prog: str) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=prog)
        parser.add_argument("model_tag", nargs="?")
        for flag in ("--model", "--port"):
            parser.add_argument(flag)
        return parser

    fake = types.SimpleNamespace(
        api_server_parser=api_server_parser,
        default_step_budget=lambda world: 2048,
        on_cuda=lambda: False,
        run_api_server=lambda: served.append(sys.argv[1:]),
    )
    monkeypatch.setitem(sys.modules, "aim_vllm.compat", fake)
    monkeypatch.setattr(aim_vllm, "compat", fake, raising=False)


@pytest.fixture
def engine_main(monkeypatch, tmp_path):
    """`engine.main` with a fake vLLM, its environment restored afterwards, and the embedded
    model's build replaced by a failure: a test passes only if nothing builds it."""
    from aim_vllm import model_builders, plugin
    from aim_vllm.commands import engine
    from aim_vllm.pruning.support import USE_V1_RUNNER_ENV
    from aim_vllm.usage import STATS_DIR_ENV

    def build(*args, **kwargs):
        raise AssertionError("the embedded model was built")

    monkeypatch.setattr(model_builders, "trained_model_dir", build)
    monkeypatch.setattr(plugin, "version_problem", lambda: None)
    for name, value in [
        (USE_V1_RUNNER_ENV, "0"),
        (STATS_DIR_ENV, str(tmp_path)),
        ("VLLM_CPU_KVCACHE_SPACE", "1"),
        ("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600"),
    ]:
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    served: list[list[str]] = []
    _fake_compat(monkeypatch, served)
    return engine.main, served


@pytest.mark.parametrize(
    ("argv", "code"), [(["--help"], 0), (["--no-such-flag"], 2)], ids=["help", "bad-flag"]
)
def test_help_and_a_bad_flag_answer_before_the_model_is_built(engine_main, argv, code) -> None:
    """`--help` and a mistyped flag are answered by vLLM's parser at once; they used to wait for
    the embedded model's training (over 120 s on a fresh machine)."""
    main, served = engine_main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code and served == []


def test_a_positional_model_is_served_without_building_the_embedded_one(engine_main, tmp_path) -> None:
    main, served = engine_main
    model = _checkpoint(tmp_path / "m", 4096)
    assert main([model, "--port", "9000"]) == 0
    (argv,) = served
    assert argv[:2] == ["--model", model] and _flag(argv, "--port") == "9000"


def test_a_positional_model_after_other_flags_is_refused(engine_main, capsys) -> None:
    """vLLM's API server would read it as `model_tag` and serve its own default model instead."""
    main, served = engine_main
    assert main(["--port", "9000", "/some/model"]) == 2 and served == []
    assert "give the model first" in capsys.readouterr().err


def test_vllms_own_parser_answers_help_and_bad_flags() -> None:
    """The same with vLLM's real parser, in a fresh process whose model build fails loudly."""
    script = """
import sys
from aim_vllm import model_builders
from aim_vllm.cli import main

def build(*args, **kwargs):
    raise SystemExit("the embedded model was built")

model_builders.trained_model_dir = build
for argv in (["engine", "--help"], ["engine", "--no-such-flag"]):
    try:
        main(argv)
    except SystemExit as exc:
        print("exit", exc.code, flush=True)
"""
    env = {k: v for k, v in os.environ.items() if k != "AIM_VLLM_DEFAULT"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert "the embedded model was built" not in result.stdout + result.stderr
    assert "--aim-default LEVEL" in result.stdout and "--max-model-len" in result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith("exit ")] == ["exit 0", "exit 2"]
    assert "unrecognized arguments: --no-such-flag" in result.stderr
