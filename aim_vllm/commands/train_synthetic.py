"""`aim-vllm train-synthetic [OUT_DIR]`: train a small LLaVA-OneVision, Qwen2.5-VL or Qwen3-VL on shape QA.

The tiny builder's architecture (Qwen2 LLM + SigLIP 384/14, local tokenizer), trained from a
fixed seed on questions generated on the fly (`aim_vllm.training`), per `--recipe`: `colour`
or its alias `embedded` (the embedded default) or `local` (a patch-local encoder whose answers
live in a few visual tokens: the model on which `aim-vllm eval` tells AIM from the baselines);
`qwen-position` trains the tiny Qwen2.5-VL instead, with a patch-local ViT, on which quadrant
holds a shape: its answers come from M-RoPE positions alone; `qwen3-colour` and `qwen3-position`
train the tiny Qwen3-VL, patch-local, on `local`'s colour task and on the position task (the
qwen* recipes need OUT_DIR).
A run probes held-out accuracy as it goes and stops at, or continues (bounded) towards, the
recipe's target. OUT_DIR then holds a checkpoint vLLM serves as is (`aim-vllm engine --model
OUT_DIR`) and `training.json` (config, wall time, held-out accuracy and curve, CPU flags, versions).
An interrupted run resumes from OUT_DIR/_train; a finished OUT_DIR is reused. Without OUT_DIR the
model is built into (or reused from) the cache: `aim_vllm.model_builders.trained_model_dir(config)`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, nargs="?", help="checkpoint directory (default: the cache)")
    parser.add_argument(
        "--recipe",
        choices=("colour", "embedded", "local", "qwen-position", "qwen3-colour", "qwen3-position"),
        default="colour",
        help="colour (alias embedded): the embedded default; local: patch-local vision, for comparing "
        "token reductions; qwen-position: a patch-local Qwen2.5-VL answering where a shape is, from "
        "M-RoPE alone; qwen3-colour, qwen3-position: those tasks on a patch-local Qwen3-VL (the qwen* "
        "recipes need OUT_DIR) (aim_vllm.training.RECIPES)",
    )
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data seed (default 0)")
    parser.add_argument("--eval-items", type=int, default=None, help="held-out items scored at the end")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="try seeds SEED, SEED+1, ... in turn until one meets the held-out target, at most N, and "
        "keep the best by probe (default: the recipe's, 2 or 3; a second seed trains only if the first "
        "stalls)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default 1: faster on a shared machine)"
    )


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from aim_vllm.training import RECIPES, train_best_of

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = dataclasses.replace(RECIPES[args.recipe], seed=args.seed)
    if args.seeds is not None:
        config = dataclasses.replace(config, seeds=args.seeds)
    if config.arch != "llava-onevision" and args.out_dir is None:
        raise ValueError(
            f"--recipe {args.recipe} trains a {config.arch} model: give OUT_DIR (the cache "
            "holds LLaVA-OneVision models)"
        )
    if args.eval_items is not None:
        config = dataclasses.replace(config, eval_items=args.eval_items)
    if args.out_dir is None:
        from aim_vllm.model_builders import trained_model_dir

        out = trained_model_dir(config, threads=args.threads)
    elif (args.out_dir / "training.json").exists():
        out = args.out_dir
    else:
        out = args.out_dir
        train_best_of(out, config, threads=args.threads)
    record = json.loads((out / "training.json").read_text())
    summary = {key: record.get(key) for key in ("train_wall_s", "steps", "eval")}
    curve = [(point["step"], point["probe_accuracy"]) for point in record.get("curve", [])]
    print(json.dumps({"model": str(out), **summary, "curve": curve}))
    return 0
