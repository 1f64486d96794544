"""One module per `aim-vllm` subcommand: `add_arguments(parser)` and `run(args) -> int`.

Modules stay light at import time (the CLI imports all of them to build its help); heavy
imports (torch, vLLM) happen inside `run`.
"""
