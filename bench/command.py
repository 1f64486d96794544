"""`aim-vllm bench`: latency and throughput of AIM levels against AIM off, in one run.

    aim-vllm bench [--model DIR [--dummy]] [--media image video8 video16] [--concurrency 1 4 16]
                   [--levels off merge prune balanced max budget:0.3 budget:0.15] [--rounds 2]
                   [--waves 2] [--out DIR] [--plugin-overhead] [--quick] [-- vLLM flags]

Starts one AIM engine (default: LLaVA-OneVision-0.5B shapes, dummy weights, bf16) and the gateway,
then sends the same workload through the gateway at every level (AIM levels are per request, so
one engine serves them all): streaming chat requests with a fresh random image or video each
(fresh media: vLLM would reuse the encoder output of media it saw before). Phases of `waves x
concurrency` requests per (media, concurrency, level) run with the levels interleaved, in ABBA
order over pairs of rounds (a linear drift cancels). At concurrency 1 each level also gets
`--split-pairs` fresh+repeat pairs: the repeat reuses the encoder output but, with a prefix-cache
salt of its own, none of the fresh request's KV, so it times the LLM part alone.

Reports TTFT (first streamed token), TPOT, end-to-end latency, requests/s and output tokens/s per
cell with their ratios to `off` of the same media and concurrency, the executed FLOPs ratio from
`usage.aim`, and the LLM-part vs end-to-end speedups with the Amdahl bound. Writes result.json,
result.md and result.png to --out and prints the Markdown.

Levels: `off`, `light`, `balanced`, `max`, `budget:<0-1>`, `merge:<r>,prune:<l1>-<l2>`, and two
shorthands: `merge` (the balanced merge ratio alone) and `prune` (the balanced pruning window
alone, as the engine resolves them for the model).

--plugin-overhead: stock vLLM as users start it (plugin disabled, vLLM's defaults: compiled,
prefix caching, chunked prefill; the same --max-model-len) against the AIM engine with AIM off,
each engine up alone for its turn of every round, same workload sent to each engine directly;
reports the throughput ratio (goal >= 0.98) and ordinary traffic (`bench/serving.py`: text
decode, an image chat's second turn, decode streams during a long prefill, start-up).
--evs RATE: stock vLLM with its own video pruning (EVS, `--video-pruning-rate RATE`, plugin
disabled) against the AIM engine at `off`, merging to 1 - RATE (as many tokens as EVS in every
layer), the same merge plus pruning (as many tokens entering the LLM) and `budget:` EVS's FLOPs;
each engine up alone for its turn of every round; videos only. A Qwen2.5-VL or Qwen3-VL model (vLLM's
EVS supports the Qwen-VL family). The stock engines need `bench/evs_cpu` (said in the report).
--evs-encoder KEEP (with --evs): also `aim-merge+encoder` and `aim-tokens+encoder`, the same levels
with the ViT merging at KEEP (`encoder:KEEP`).
--evs-methods evs vidcom2 (with --evs): one stock engine turn per vLLM video pruning method at RATE
(`vidcom2`: `--video-pruning-method vidcom2`, Qwen3-VL); default `evs` alone. On Qwen3-VL,
`aim-tokens` prunes from the layer after its DeepStack layers on.
--evs-levels aim-tokens aim-tokens+encoder (with --evs): time only these AIM levels (and `off`),
for more rounds in the same time; default all.
--quick: a smoke run on the embedded tiny model (image + 8-frame video, concurrency 1 and 2,
one request per slot, one round): a few minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

_DEFAULTS = {  # full run / --quick
    "media": (["image", "video8", "video16"], ["image", "video8"]),
    "concurrency": ([1, 4, 16], [1, 2]),
    "rounds": (2, 1),
    "waves": (2, 1),
    "split_pairs": (2, 1),
    "max_tokens": (32, 8),
}
_DEFAULT_MAX_MODEL_LEN = "16384"  # a 16-frame video plus an anyres image fit with room to spare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bench.workload import DEFAULT_LEVELS, EVS_AIM_LEVELS, STOCK_METHODS

    parser.add_argument(
        "--model", help="checkpoint dir or name (default: LLaVA-OV-0.5B shapes, dummy weights)"
    )
    parser.add_argument("--dummy", action="store_true", help="--load-format dummy for --model")
    parser.add_argument("--dtype", help="engine dtype (default: bfloat16; float32 for --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run on the embedded tiny model")
    parser.add_argument(
        "--plugin-overhead", action="store_true", help="plain vLLM vs AIM engine with AIM off"
    )
    parser.add_argument(
        "--evs",
        type=float,
        metavar="RATE",
        help="stock vLLM with --video-pruning-rate RATE vs the AIM engine at equal tokens and FLOPs",
    )
    parser.add_argument(
        "--evs-encoder",
        type=float,
        metavar="KEEP",
        help="with --evs: also aim-merge and aim-tokens with encoder:KEEP (the ViT merging too)",
    )
    parser.add_argument(
        "--evs-methods",
        nargs="+",
        choices=STOCK_METHODS,
        metavar="METHOD",
        help=f"with --evs: stock engines, one turn each ({', '.join(STOCK_METHODS)}; default: evs)",
    )
    parser.add_argument(
        "--evs-levels",
        nargs="+",
        choices=EVS_AIM_LEVELS,
        metavar="LEVEL",
        help=f"with --evs: the AIM levels timed besides off ({', '.join(EVS_AIM_LEVELS)}; default all)",
    )
    parser.add_argument(
        "--media", nargs="+", help="image, video<frames> (default: image video8 video16; --evs: videos)"
    )
    parser.add_argument("--concurrency", nargs="+", type=int, help="requests in flight (default: 1 4 16)")
    parser.add_argument("--levels", nargs="+", default=list(DEFAULT_LEVELS), help="AIM levels; off is added")
    parser.add_argument("--rounds", type=int, help="interleaved rounds over all cells (default 2)")
    parser.add_argument(
        "--waves", type=int, help="requests per cell and round = waves x concurrency (default 2)"
    )
    parser.add_argument(
        "--split-pairs", type=int, help="fresh+repeat pairs per level, media and round (default 2)"
    )
    parser.add_argument(
        "--max-tokens", type=int, help="tokens generated per request (ignore_eos; default 32)"
    )
    parser.add_argument("--image-size", type=int, default=384, help="side of the square random images")
    parser.add_argument("--frame-size", type=int, default=384, help="side of the square random video frames")
    parser.add_argument("--startup-timeout", type=float, default=1800.0, help="seconds for the engine(s)")
    parser.add_argument("--seed", type=int, default=10_000, help="first media seed")
    parser.add_argument("--out", type=Path, help="output dir (default: runs/bench-<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then extra flags for the engine(s)")


def _pick(args: argparse.Namespace, name: str) -> object:
    value = getattr(args, name)
    return value if value is not None else _DEFAULTS[name][int(args.quick)]


def model_and_flags(args: argparse.Namespace) -> tuple[str, str, list[str]]:
    """(model, label for reports, engine flags) for the chosen model."""
    from aim_vllm.model_builders import default_model_dir

    extra = args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else list(args.vllm_args)
    if args.model is not None:
        flags = (["--load-format", "dummy"] if args.dummy else []) + (
            ["--dtype", args.dtype] if args.dtype else []
        )
        return args.model, Path(args.model).name or args.model, [*flags, *extra]
    if args.quick:
        return (
            str(default_model_dir()),
            "tiny LLaVA-OneVision (random)",
            ["--dtype", args.dtype or "float32", *extra],
        )
    flags = [
        "--load-format",
        "dummy",
        "--dtype",
        args.dtype or "bfloat16",
        "--max-model-len",
        _DEFAULT_MAX_MODEL_LEN,
    ]
    model = str(default_model_dir("llava-onevision", "0.5b"))
    return model, "LLaVA-OneVision-0.5B shapes (dummy weights)", [*flags, *extra]


def options_from_args(args: argparse.Namespace):
    """BenchOptions from the flags (ValueError for invalid values)."""
    from bench.runner import BenchOptions
    from bench.workload import check_levels, parse_media

    check_levels(args.levels)
    counts = {name: _pick(args, name) for name in ("rounds", "waves", "split_pairs", "max_tokens")}
    concurrency = _pick(args, "concurrency")
    if (
        min(counts["rounds"], counts["waves"], counts["max_tokens"], *concurrency) < 1
        or counts["split_pairs"] < 0
    ):
        raise ValueError(f"counts must be >= 1 (split pairs >= 0): {counts}, concurrency {concurrency}")
    if args.evs is not None and (args.plugin_overhead or not 0.0 < args.evs < 1.0):
        raise ValueError(f"--evs takes a rate in (0, 1) and excludes --plugin-overhead, got {args.evs}")
    if args.evs_encoder is not None and (args.evs is None or not 0.0 < args.evs_encoder < 1.0):
        raise ValueError(
            f"--evs-encoder takes a keep fraction in (0, 1) and needs --evs, got {args.evs_encoder}"
        )
    if args.evs_methods is not None and args.evs is None:
        raise ValueError(f"--evs-methods needs --evs, got {args.evs_methods}")
    methods = tuple(dict.fromkeys(args.evs_methods or ["evs"]))
    if args.evs_levels is not None and args.evs is None:
        raise ValueError(f"--evs-levels needs --evs, got {args.evs_levels}")
    evs_levels = None if args.evs_levels is None else tuple(dict.fromkeys(args.evs_levels))
    if evs_levels and args.evs_encoder is None and any(level.endswith("+encoder") for level in evs_levels):
        raise ValueError(f"--evs-levels {' '.join(evs_levels)} needs --evs-encoder")
    media = _pick(args, "media") if args.evs is None or args.media else ["video8", "video16"]
    model, label, flags = model_and_flags(args)
    prefix = "plugin-overhead" if args.plugin_overhead else "evs" if args.evs is not None else "bench"
    out = args.out or Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    return BenchOptions(
        model=model, model_label=label, engine_flags=tuple(flags),
        media=tuple(parse_media(m) for m in media), concurrency=tuple(concurrency),
        levels=tuple(args.levels), rounds=counts["rounds"], waves=counts["waves"],
        split_pairs=counts["split_pairs"], max_tokens=counts["max_tokens"], image_size=args.image_size,
        frame_size=args.frame_size, out_dir=out, startup_timeout_s=args.startup_timeout,
        plugin_overhead=args.plugin_overhead, evs_rate=args.evs, evs_encoder_keep=args.evs_encoder,
        evs_methods=methods, evs_levels=evs_levels, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from bench import report, runner

    options = options_from_args(args)
    result = runner.run(options)
    paths = report.write_outputs(result, options.out_dir)
    print(report.markdown(result))
    print(json.dumps(report.summary_line(result, paths)))
    return 0
