"""How often this project's removal (= masking as queries and keys) keeps other tokens than the
AIM reference code's key-only masking, on the embedded tiny model (a measured deviation, AIM §3.2).

Run: .venv/bin/python bench/keyonly_deviation.py [--prompts 20] [--prune 1,4]
For random prompts (text, visual span, text) through the tiny model's LLM, both formulations rank
visual tokens layer by layer; prints, per pruning layer, the share of prompts whose kept sets
differ and the mean Jaccard overlap of the kept visual tokens, as one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch

from aim_vllm.model_builders import default_model_dir
from aim_vllm.reference.decoder import ReferenceDecoder, load_llm_weights


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--prune", default="1,4", help="pruning window l1,l2")
    parser.add_argument("--visual", type=int, default=200, help="visual tokens per prompt")
    args = parser.parse_args()
    prune = tuple(int(v) for v in args.prune.split(","))
    weights, config = load_llm_weights(default_model_dir())
    decoder = ReferenceDecoder(weights, config)
    dim = weights["embed_tokens.weight"].shape[1]
    differ: dict[int, int] = {}
    overlap: dict[int, list[float]] = {}
    for seed in range(args.prompts):
        n = 10 + args.visual + 12
        g = torch.Generator().manual_seed(seed)
        embeds = torch.randn(n, dim, generator=g) * 0.5
        is_visual = torch.zeros(n, dtype=torch.bool)
        is_visual[10 : 10 + args.visual] = True
        with torch.no_grad():
            _, ours = decoder.forward_masked(embeds, torch.arange(n), is_visual, prune)
            _, theirs = decoder.forward_masked(embeds, torch.arange(n), is_visual, prune, key_only=True)
        for layer, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            kept_a, kept_b = (
                set((a & is_visual).nonzero().flatten().tolist()),
                set((b & is_visual).nonzero().flatten().tolist()),
            )
            if len(kept_a) == args.visual:
                continue  # no pruning yet at this layer
            differ[layer] = differ.get(layer, 0) + (kept_a != kept_b)
            union = kept_a | kept_b
            overlap.setdefault(layer, []).append(len(kept_a & kept_b) / len(union) if union else 1.0)
    print(
        json.dumps(
            {
                "prompts": args.prompts,
                "visual_tokens": args.visual,
                "prune_layers": list(prune),
                "share_differing_by_layer": {str(k): v / args.prompts for k, v in differ.items()},
                "mean_jaccard_by_layer": {str(k): sum(v) / len(v) for k, v in overlap.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
