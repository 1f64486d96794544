"""`aim-vllm bench` flags -> options, and the engine command lines it starts (no engine here)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from aim_vllm import cli
from bench import command as bench
from bench import processes


def _options(argv: list[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(
        "aim_vllm.model_builders.default_model_dir",
        lambda arch="llava-onevision", size="tiny": Path(f"/m/{size}"),
    )
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return bench.options_from_args(parser.parse_args(argv))


def test_default_run_is_the_0_5b_dummy_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's workload: image, 8/16-frame videos, concurrency 1/4/16, all levels, bf16 dummy weights."""
    options = _options([], monkeypatch)
    assert options.model == "/m/0.5b"
    assert options.engine_flags[:4] == ("--load-format", "dummy", "--dtype", "bfloat16")
    assert [m.name for m in options.media] == ["image", "video8", "video16"]
    assert options.concurrency == (1, 4, 16)
    assert options.levels[:6] == ("off", "merge", "prune", "balanced", "max", "budget:0.3")
    assert (options.rounds, options.waves, options.split_pairs) == (2, 2, 2)
    assert not options.plugin_overhead and options.out_dir.parts[0] == "runs"


def test_quick_run_is_small(monkeypatch: pytest.MonkeyPatch) -> None:
    options = _options(["--quick", "--", "--max-num-seqs", "4"], monkeypatch)
    assert options.model == "/m/tiny" and options.engine_flags == (
        "--dtype",
        "float32",
        "--max-num-seqs",
        "4",
    )
    assert options.concurrency == (1, 2) and [m.name for m in options.media] == ["image", "video8"]
    assert (options.rounds, options.waves, options.split_pairs) == (1, 1, 1)


def test_flags_override_quick_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    options = _options(["--quick", "--concurrency", "3", "--media", "video4", "--levels", "max"], monkeypatch)
    assert options.concurrency == (3,) and options.media[0].frames == 4 and options.levels == ("max",)


def test_own_model(monkeypatch: pytest.MonkeyPatch) -> None:
    options = _options(["--model", "/ckpt/llava-ov-7b", "--dummy", "--dtype", "float16"], monkeypatch)
    assert options.model == "/ckpt/llava-ov-7b" and options.model_label == "llava-ov-7b"
    assert options.engine_flags == ("--load-format", "dummy", "--dtype", "float16")


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--concurrency", "0"], ["--split-pairs", "-1"]])
def test_invalid_counts(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="must be"):
        _options(argv, monkeypatch)


def test_bench_is_a_cli_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert "bench" in cli.COMMANDS
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    assert "--plugin-overhead" in capsys.readouterr().out


def test_plain_engine_is_stock_vllm_with_its_defaults(tmp_path: Path) -> None:
    """Plain vLLM = the run's flags and the AIM engine's context length, vLLM's own defaults for the
    rest: nothing of AIM's (middleware, scheduler, step budgets), nothing switched off."""
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 32768}')
    argv = processes.plain_engine_argv(str(tmp_path), ["--dtype", "float32"], 1234)
    assert argv == [
        "--model", str(tmp_path), "--dtype", "float32", "--port", "1234", "--host", "127.0.0.1",
        "--max-model-len", "8192",
    ]  # fmt: skip
    named = processes.plain_engine_argv(
        str(tmp_path), ["--max-model-len", "4096", "--scheduler-cls", "my.S"], 1
    )
    assert named.count("--max-model-len") == 1 and named[named.index("--scheduler-cls") + 1] == "my.S"


def test_gateway_command_raises_timeouts() -> None:
    """Queued CPU video prefills exceed the gateway's default 300 s read timeout."""
    command = processes.gateway_command("http://127.0.0.1:1", 8000)
    assert command[command.index("--read-timeout-s") + 1] == "7200"
    assert command[command.index("--default-aim") + 1] == "off"


def test_plain_engine_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain vLLM: vLLM's own server entry, the plugin disabled, vLLM's step timeout raised."""
    started = {}

    class FakePopen:
        def __init__(self, command, **kwargs) -> None:
            started.update(command=command, env=kwargs["env"], new_session=kwargs["start_new_session"])

    monkeypatch.setattr(processes.subprocess, "Popen", FakePopen)
    monkeypatch.delenv("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", raising=False)
    replica = processes.start_plain_engine("/m", ["--dtype", "float32"], tmp_path)
    assert started["command"][1:3] == ["-m", "vllm.entrypoints.launchers.api_server.entry"]
    assert started["env"]["AIM_VLLM_DISABLE"] == "1" and started["new_session"]
    assert started["env"]["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "3600"
    assert replica.log_path == tmp_path / "plain-1.log"


def test_evs_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """--evs-methods picks the stock engines (vLLM's video pruning methods); `evs` alone by default."""
    argv = ["--model", "/ckpt/qwen3-vl-8b-4l", "--dummy", "--evs", "0.75"]
    assert _options(argv, monkeypatch).evs_methods == ("evs",)
    both = _options([*argv, "--evs-methods", "evs", "vidcom2", "evs"], monkeypatch)
    assert both.evs_methods == ("evs", "vidcom2") and [m.name for m in both.media] == ["video8", "video16"]
    assert _options([*argv, "--evs-methods", "vidcom2"], monkeypatch).evs_methods == ("vidcom2",)
    with pytest.raises(ValueError, match="needs --evs"):
        _options(["--evs-methods", "vidcom2"], monkeypatch)
    with pytest.raises(SystemExit):  # not a vLLM 0.32 method
        _options([*argv, "--evs-methods", "fastv"], monkeypatch)


def test_evs_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    """--evs-levels narrows the AIM levels of an EVS run; the +encoder ones need --evs-encoder."""
    argv = ["--model", "/ckpt/qwen3-vl-8b-4l", "--dummy", "--evs", "0.75"]
    assert _options(argv, monkeypatch).evs_levels is None
    levels = ["--evs-levels", "aim-tokens", "aim-tokens+encoder"]
    chosen = _options([*argv, "--evs-encoder", "0.5", *levels], monkeypatch)
    assert chosen.evs_levels == ("aim-tokens", "aim-tokens+encoder")
    with pytest.raises(ValueError, match="needs --evs-encoder"):
        _options([*argv, "--evs-levels", "aim-tokens+encoder"], monkeypatch)
    with pytest.raises(ValueError, match="needs --evs"):
        _options(["--evs-levels", "aim-tokens"], monkeypatch)
    with pytest.raises(SystemExit):
        _options([*argv, "--evs-levels", "balanced"], monkeypatch)
