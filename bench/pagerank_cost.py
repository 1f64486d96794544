"""PageRank importance time at long prompts: causal row blocks against one dense N x N block.

Run: .venv/bin/python bench/pagerank_cost.py [--tokens 1668 6372] [--shape llava-onevision-0.5b]
Pure torch (no vLLM). `aim_vllm.core.importance.pagerank_importance` with its default `row_block`
(rows [r0, r1) computed against keys [0, r1) only) and with `row_block = N` (the whole causal N x N
matrix at once, as before the blocks), interleaved in one run on the same random rotated Q/K of
one pruning layer of the shape. 6,372 tokens = 32 frames x 196 + 100 text tokens; 1,668 = the same
after merging to 25%. Prints one JSON line per prompt length: median seconds of each, their
ratio and the largest absolute difference of the scores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.importance import pagerank_importance


def compare(tokens: int, heads: int, kv_heads: int, head_dim: int, repeats: int) -> dict:
    """Median seconds of blocked and dense PageRank on one random layer, interleaved."""
    generator = torch.Generator().manual_seed(tokens)
    q = torch.randn(tokens, heads, head_dim, generator=generator)
    k = torch.randn(tokens, kv_heads, head_dim, generator=generator)
    variants = {"blocked": {}, "dense": {"row_block": tokens}}
    times: dict[str, list[float]] = {name: [] for name in variants}
    scores = {}
    for _ in range(repeats):
        for name, kwargs in variants.items():
            began = time.perf_counter()
            scores[name] = pagerank_importance(q, k, **kwargs)
            times[name].append(time.perf_counter() - began)
    blocked, dense = (statistics.median(times[name]) for name in ("blocked", "dense"))
    return {
        "tokens": tokens,
        "blocked_s": blocked,
        "dense_s": dense,
        "dense_over_blocked": dense / blocked,
        "max_abs_diff": (scores["blocked"] - scores["dense"]).abs().max().item(),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[1668, 6372])
    parser.add_argument("--shape", choices=sorted(ARCHITECTURES), default="llava-onevision-0.5b")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    llm = ARCHITECTURES[args.shape].llm
    rows = []
    for tokens in args.tokens:
        row = {
            "shape": args.shape,
            **compare(tokens, llm.num_heads, llm.num_kv_heads, llm.head_dim, args.repeats),
        }
        print(json.dumps(row))
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
