"""Cost of AIM's own work per frame (merging + PageRank importance) relative to the vision encoder.

Run: .venv/bin/python bench/merge_overhead.py [--arch llava-onevision-7b] [--frames 32] [--device cpu|cuda]
Pure torch (no vLLM): a SigLIP-so400m-shaped vision tower with random weights (transformers) encodes
one 384x384 frame; merging runs on that frame's 196 pooled tokens at the LLM width; importance runs
on every pruning layer of the balanced preset over the whole merged prompt, divided by the frames.
Prints one JSON line: milliseconds per frame of each part and their ratios to the encoder.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.importance import pagerank_importance
from aim_vllm.core.merge import merge_frames
from aim_vllm.core.schedule import preset_schedule
from aim_vllm.core.token_counts import merged_token_count, visual_kept_after_layer


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch", default="llava-onevision-7b", choices=["llava-onevision-7b", "llava-onevision-0.5b"]
    )
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--text-tokens", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    dtype, device = getattr(torch, args.dtype), args.device
    spec = ARCHITECTURES[args.arch]
    llm = spec.llm
    vision = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=26,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
    )
    tower = SiglipVisionModel(vision).to(device, dtype).eval()
    pixels = torch.randn(1, 3, 384, 384, device=device, dtype=dtype)
    frames = torch.randn(args.frames, 196, llm.hidden_size, device=device, dtype=dtype)
    schedule = preset_schedule("balanced", llm.num_layers)
    merged = args.frames * merged_token_count(196, schedule.merge_ratio) + 1
    n = args.text_tokens + merged
    q = torch.randn(n, llm.num_heads, llm.head_dim, device=device, dtype=dtype)
    k = torch.randn(n, llm.num_kv_heads, llm.head_dim, device=device, dtype=dtype)
    kept = visual_kept_after_layer(merged, llm.num_layers, schedule.prune_layers)
    entering = [merged, *kept[:-1]]
    pruning_layers = [e for k_, e in zip(kept, entering, strict=True) if k_ < e]

    with torch.no_grad():
        encoder = timed(lambda: tower(pixels), device, args.repeats)
        merge = (
            timed(
                lambda: merge_frames(frames, merged_token_count(196, schedule.merge_ratio)),
                device,
                args.repeats,
            )
            / args.frames
        )
        importance = (
            sum(
                timed(
                    lambda e=e: pagerank_importance(q[: args.text_tokens + e], k[: args.text_tokens + e]),
                    device,
                    max(1, args.repeats // 2),
                )
                for e in pruning_layers
            )
            / args.frames
        )
    print(
        json.dumps(
            {
                "arch": args.arch,
                "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                "dtype": args.dtype,
                "frames": args.frames,
                "pruning_layers": len(pruning_layers),
                "encoder_ms_per_frame": encoder * 1e3,
                "merge_ms_per_frame": merge * 1e3,
                "importance_ms_per_frame": importance * 1e3,
                "merge_vs_encoder": merge / encoder,
                "importance_vs_encoder": importance / encoder,
                "aim_vs_encoder": (merge + importance) / encoder,
            }
        )
    )


if __name__ == "__main__":
    main()
