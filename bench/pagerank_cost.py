"""PageRank importance against the decoder layer it prunes at, side by side (pure torch, no vLLM).

Run: .venv/bin/python bench/pagerank_cost.py [--tokens 1668 6372] [--shape llava-onevision-0.5b ...]
For each shape and prompt length, interleaved in one run: one decoder layer of the shape without
pruning (`bench.gpu_prefill.layer_forward`: RMSNorm, QKV, RoPE, causal SDPA, o_proj, SwiGLU MLP;
random weights) and `aim_vllm.core.importance.pagerank_importance` at its defaults on rotated
Q/K of the same size, and the floor of any importance that recomputes the scores (AIM spec: the
paged kernels return no weights): the causal Q K^T alone (`causal_logits_only`). 6,372 tokens =
32 frames x 196 + 100 text tokens; 1,668 = the same after merging to 25%. The scores are checked
against the definition computed one head at a time on the whole N x N
(`pagerank_importance_masked`, every token active). Prints one JSON line per row: median seconds
of each, importance / layer, Q K^T floor / layer, the largest absolute difference of the scores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.importance import pagerank_importance, pagerank_importance_masked
from bench.gpu_prefill import Rows, init_layers, layer_forward, rope_tables


def dense_reference(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The definition on the whole causal N x N, one head at a time (RMS over heads)."""
    group = q.shape[1] // k.shape[1]
    everything = torch.ones(q.shape[0], dtype=torch.bool)
    per_head = [
        pagerank_importance_masked(q[:, h : h + 1], k[:, h // group : h // group + 1], everything)
        for h in range(q.shape[1])
    ]
    return torch.stack(per_head).square().mean(dim=0).sqrt()


def causal_logits_only(q: torch.Tensor, k: torch.Tensor, row_block: int = 64) -> None:
    """The causal Q K^T that `pagerank_importance` recomputes, and nothing else (its time floor).

    Per row block, one product of a key head's keys against all its query heads' rows (keys x
    queries): the fastest of the arrangements timed on this CPU. The logits are dropped.
    """
    num_tokens, num_heads, head_size = q.shape
    group = num_heads // k.shape[1]
    for kv_head in range(k.shape[1]):
        queries = q[:, kv_head * group : (kv_head + 1) * group].transpose(0, 1).contiguous()  # (g, N, D)
        keys = k[:, kv_head].contiguous()  # (N, D)
        for r0 in range(0, num_tokens, row_block):
            r1 = min(r0 + row_block, num_tokens)
            keys[:r1] @ queries[:, r0:r1].reshape(-1, head_size).T


@torch.no_grad()
def compare(shape_name: str, tokens: int, repeats: int, check: bool) -> dict:
    """Median seconds of one layer and of its importance, interleaved, on random inputs."""
    shape = replace(ARCHITECTURES[shape_name].llm, num_layers=1)
    generator = torch.Generator().manual_seed(tokens)
    q = torch.randn(tokens, shape.num_heads, shape.head_dim, generator=generator)
    k = torch.randn(tokens, shape.num_kv_heads, shape.head_dim, generator=generator)
    (layer,) = init_layers(shape, "cpu", torch.float32)
    hidden = torch.randn(tokens, shape.hidden_size, generator=generator)
    cos, sin = rope_tables(torch.arange(tokens), shape.head_dim, hidden.dtype)
    rows = Rows(hidden, cos, sin, is_visual=torch.zeros(tokens, dtype=torch.bool))
    timed = {
        "layer": lambda: layer_forward(layer, rows, shape, None),
        "importance": lambda: pagerank_importance(q, k),
        "qk_floor": lambda: causal_logits_only(q, k),
    }
    times: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(repeats):
        for name, run in timed.items():
            began = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - began)
    layer_s, importance_s, floor_s = (statistics.median(times[name]) for name in timed)
    row = {
        "shape": shape_name,
        "tokens": tokens,
        "layer_s": layer_s,
        "importance_s": importance_s,
        "importance_over_layer": importance_s / layer_s,
        "qk_floor_s": floor_s,
        "qk_floor_over_layer": floor_s / layer_s,
    }
    if check:
        row["max_abs_diff"] = (pagerank_importance(q, k) - dense_reference(q, k)).abs().max().item()
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[1668, 6372])
    parser.add_argument("--shape", choices=sorted(ARCHITECTURES), nargs="+", default=["llava-onevision-0.5b"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the dense reference")
    args = parser.parse_args(argv)
    rows = []
    for shape_name in args.shape:
        for tokens in args.tokens:
            row = compare(shape_name, tokens, args.repeats, args.check)
            print(json.dumps(row))
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
