"""`aim-vllm` command line: thin dispatch to one module per subcommand (imported lazily)."""

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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aim-vllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["engine"]:
        # vLLM parses its own flags: pass everything after `engine` through untouched.
        return importlib.import_module("aim_vllm.commands.engine").main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except ValueError as exc:  # invalid user input found past argparse (e.g. a bad schedule)
        parser.exit(2, f"aim-vllm {args.command}: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
