"""`aim-vllm train-synthetic [OUT_DIR]`: train a small LLaVA-OneVision on synthetic shape QA (CPU).

The tiny builder's architecture (Qwen2 LLM + SigLIP 384/14, local tokenizer), trained from a
fixed seed on questions generated on the fly (`aim_vllm.training`), per `--recipe`: `colour`
(the embedded default) or `local` (a patch-local encoder whose answers live in a few visual
tokens: the model on which `aim-vllm eval` tells AIM from the baselines). OUT_DIR then holds a
checkpoint vLLM serves as is (`aim-vllm engine --model OUT_DIR`) and `training.json` (config,
wall time, held-out accuracy).
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
        choices=("colour", "local"),
        default="colour",
        help="colour: the embedded default; local: patch-local vision, for comparing token reductions "
        "(aim_vllm.training.RECIPES)",
    )
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data seed (default 0)")
    parser.add_argument("--eval-items", type=int, default=None, help="held-out items scored at the end")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default 1: faster on a shared machine)"
    )


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from aim_vllm.training import RECIPES, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = dataclasses.replace(RECIPES[args.recipe], seed=args.seed)
    if args.eval_items is not None:
        config = dataclasses.replace(config, eval_items=args.eval_items)
    if args.out_dir is None:
        from aim_vllm.model_builders import trained_model_dir

        out = trained_model_dir(config, threads=args.threads)
    elif (args.out_dir / "training.json").exists():
        out = args.out_dir
    else:
        out = args.out_dir
        train(out, config, threads=args.threads)
    record = json.loads((out / "training.json").read_text())
    print(json.dumps({"model": str(out), "train_wall_s": record["train_wall_s"], "eval": record["eval"]}))
    return 0
