"""`aim-vllm make-tiny-model DIR`: build a model checkpoint offline and deterministically.

`--size tiny` (default; `tiny-moe`: Qwen3-VL-MoE) writes random weights (fixed seed); `--size
0.5b|2b|3b|4b|7b|8b|30b-a3b` writes the published architecture's config, tokenizer and processor
with no weights, for `--load-format dummy`;
`--layers N` shrinks such a config to N LLM layers (widths, vocabulary and limits unchanged), and
its vision tower to `--vision-layers M` blocks (default max(2, N)).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aim_vllm.model_builders import BUILDERS, DEFAULT_ARCH, SIZES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="directory to write the checkpoint into")
    parser.add_argument("--arch", choices=sorted(BUILDERS), default=DEFAULT_ARCH)
    parser.add_argument("--size", choices=SIZES, default="tiny", help="tiny (random weights) or a real shape")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (tiny only)")
    parser.add_argument("--layers", type=int, help="keep only this many LLM layers (published sizes)")
    parser.add_argument(
        "--vision-layers", type=int, help="with --layers: vision tower blocks to keep (default max(2, N))"
    )


def run(args: argparse.Namespace) -> int:
    from aim_vllm.model_builders import build_model

    out = build_model(
        args.out_dir, args.arch, args.size, args.seed, layers=args.layers, vision_layers=args.vision_layers
    )
    print(out)
    return 0
