"""`aim-vllm` command line: thin dispatch to one module per subcommand, imported on use."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("aim_vllm.commands.serve", "start vLLM replica(s) with the plugin and the gateway"),
    "engine": ("aim_vllm.commands.engine", "start one vLLM OpenAI server with the AIM plugin"),
    "gateway": ("aim_vllm.commands.gateway", "start the gateway in front of running vLLM servers"),
    "make-tiny-model": ("aim_vllm.commands.make_tiny_model", "build a tiny model offline"),
    "flops": ("aim_vllm.commands.flops", "LLM prefill FLOPs with and without AIM"),
    "make-synthetic-data": ("aim_vllm.commands.make_synthetic_data", "write a synthetic shape QA data set"),
    "train-synthetic": ("aim_vllm.commands.train_synthetic", "train a small model on synthetic QA (CPU)"),
    "bench": ("bench.command", "latency and throughput of AIM levels vs AIM off, one run"),
    "eval": ("aim_vllm.commands.eval", "accuracy vs FLOPs of AIM levels and baselines on a data set"),
}


def _top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aim-vllm", description="AIM for vLLM: serve, benchmark, build models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        _top_level_parser().parse_args(argv)  # prints usage, or an error for an unknown command
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    if name == "engine":  # vLLM parses its own flags: pass them through untouched
        return module.main(rest)
    parser = argparse.ArgumentParser(
        prog=f"aim-vllm {name}",
        description=module.__doc__ or help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except ValueError as exc:  # invalid user input found past argparse (e.g. a bad schedule)
        parser.exit(2, f"aim-vllm {name}: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
