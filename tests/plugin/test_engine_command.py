"""`aim-vllm engine`: AIM's defaults for vLLM flags, user flags always win."""

from aim_vllm.commands.engine import engine_argv, pop_aim_default


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_defaults_for_the_embedded_model() -> None:
    args = engine_argv(["--port", "9000"], "/models/tiny")
    assert _flag(args, "--model") == "/models/tiny"
    assert _flag(args, "--dtype") == "float32"
    for flag in (
        "--trust-request-mm-kwargs",
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--no-enable-chunked-prefill",
    ):
        assert flag in args
    assert _flag(args, "--max-num-batched-tokens") == _flag(args, "--max-model-len") == "8192"
    assert _flag(args, "--middleware") == "aim_vllm.usage_middleware.AimUsageMiddleware"


def test_user_flags_win() -> None:
    args = engine_argv(
        ["--model", "/m", "--enable-prefix-caching", "--max-model-len=4096", "--dtype", "bfloat16"], None
    )
    assert "--no-enable-prefix-caching" not in args
    assert args.count("--dtype") == 1
    assert _flag(args, "--max-num-batched-tokens") == "4096"


def test_aim_default_flag_is_removed_and_normalised() -> None:
    assert pop_aim_default(["--aim-default", "balanced", "--port", "1"]) == (
        ["--port", "1"],
        '{"aim_preset": "balanced"}',
    )
    assert pop_aim_default(['--aim-default={"aim_budget": 0.2}']) == ([], '{"aim_budget": 0.2}')
    assert pop_aim_default(["--port", "1"]) == (["--port", "1"], None)
