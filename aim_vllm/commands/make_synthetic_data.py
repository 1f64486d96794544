"""`aim-vllm make-synthetic-data DIR --n N --seed S`: a synthetic image/video QA data set.

Writes DIR/items.jsonl and DIR/media/ (PNG images, videos as directories of PNG frames): coloured
shapes on a grey background, 384x384, videos of 8 frames, one multiple-choice question per item
(colour, count, frame, direction, or those of --types, which may also name the opt-in
`position`; types cycle, answers and letters are balanced). The same seed gives byte-identical
files; the format is documented in `aim_vllm/synthetic.py`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="directory to write items.jsonl and media/ into")
    parser.add_argument("--n", type=int, default=200, help="number of items (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default 0)")
    parser.add_argument("--frames", type=int, default=8, help="frames per video (default 8, at least 4)")
    parser.add_argument(
        "--colour-size",
        default="56,96",
        help="LOW,HIGH: side in pixels of a colour question's shape, HIGH excluded (default 56,96; "
        "small shapes such as 16,24 tell token reducers apart)",
    )
    parser.add_argument(
        "--types",
        default="colour,count,frame,direction",
        help="comma-separated question types (default: the four above; the trained default model knows "
        "colour; `position`, opt-in: which quadrant holds the one shape, images only)",
    )


def run(args: argparse.Namespace) -> int:
    from aim_vllm.synthetic import write_dataset

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if args.frames < 4:
        raise ValueError(f"--frames must be at least 4 (frame questions offer 4 frames), got {args.frames}")
    types = tuple(t.strip() for t in args.types.split(",") if t.strip())
    low, high = (int(v) for v in args.colour_size.split(","))
    if not 4 <= low < high <= 200:
        raise ValueError(f"--colour-size needs 4 <= LOW < HIGH <= 200, got {args.colour_size}")
    print(write_dataset(args.out_dir, args.n, args.seed, args.frames, types, (low, high)))
    return 0
