"""Every command line that takes a level reads the one grammar; a bad one is one line and exit code 2."""

from __future__ import annotations

import json

import pytest

from aim_vllm.cli import main


def test_flops_takes_a_level(capsys) -> None:
    """Default balanced (the paper's 14.76 TFLOPs), merge only (22.9), a budget (solved below it)."""
    args = ["flops", "--arch", "llava-onevision-7b", "--frames", "32", "--text-tokens", "100", "--json"]
    for level, check in (
        ([], lambda r: round(r["aim_tflops"], 2) == 14.76),
        (["--level", "merge:0.25"], lambda r: r["aim_tflops"] == pytest.approx(22.9, abs=0.02)),
        (["--level", "budget:0.1"], lambda r: r["executed_ratio"] <= 0.1),
    ):
        assert main([*args, *level]) == 0
        assert check(json.loads(capsys.readouterr().out)), level
    with pytest.raises(SystemExit) as exited:  # a whole-prefill budget needs the tower: one line, exit 2
        main([*args, "--level", "budget:0.3,encoder:auto"])
    assert exited.value.code == 2 and "counts the LLM" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["flops", "--arch", "llava-onevision-7b", "--frames", "8", "--text-tokens", "10", "--level", "turbo"],
        ["eval", "--data", "missing.jsonl", "--out", "unused", "--levels", "off", "merge:0.25+prune:3-5"],
        ["bench", "--levels", "balanced", "budget:2"],
        ["gateway", "--upstream", "http://127.0.0.1:1", "--default-aim", "turbo"],
        ["serve", "--default-aim", "merge:2", "--model", "/nonexistent"],
    ],
    ids=["flops", "eval", "bench", "gateway", "serve"],
)
def test_a_bad_level_is_one_line_and_exit_code_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"aim-vllm {argv[0]}: error:"), err
