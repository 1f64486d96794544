"""Measured LLM prefill speedup of AIM against its FLOPs ratio: pure torch, no vLLM.

Run (a machine with a GPU; ~14 GB of bf16 weights for the 7B shape):
  python bench/gpu_prefill.py                                   # 28 layers, 32 frames, cuda, bf16
  python bench/gpu_prefill.py --frames 16 --repeats 10 --out runs/gpu-prefill.json
Smoke (CPU): python bench/gpu_prefill.py --device cpu --layers 2 --frames 4 [--shape toy]
  (the 7B widths take minutes on a small CPU; `--shape toy` keeps the code path, shrinks widths)

What runs: the LLM of LLaVA-OneVision-7B (Qwen2-7B dims: hidden 3584, 28 layers, 28 query heads,
4 KV heads, head 128, MLP 18944; QKV with bias, RoPE theta 1e6, RMSNorm, SwiGLU) with random
weights, on one prompt of `--frames` x 196 visual tokens (384x384 frames pooled to 14x14) between
14 template tokens and the rest of `--text-tokens` text tokens. Variants:
  off      the whole prompt through every layer;
  merge    each frame merged to 25% (196 -> 49) by `aim_vllm.core.merge.merge_frames` first;
  prune    the paper's pruning window (layers 14..21 for 28 layers): at a pruning layer the
           rotated Q/K give PageRank importance (`core.importance.pagerank_importance`, recomputed
           per head chunk), text + top-k visual rows are kept (`select_kept_tokens`) and the
           others are removed right after attention: o_proj, MLP and later layers see kept rows;
  aim      merge + prune (the `balanced` preset).
Attention is `torch.nn.functional.scaled_dot_product_attention` (flash on CUDA in bf16).
Timing: CUDA events around the whole prefill, merging included (perf_counter on CPU), median of
`--repeats` after `--warmup` runs. Reported per variant: milliseconds, measured speedup over off,
the executed FLOPs ratio (`aim_vllm.core.budget.estimate_flops`, what this code computes) and the
speedup divided by the FLOPs speedup. Prints one JSON line per variant and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.budget import VisualLayout, estimate_flops
from aim_vllm.core.flops import LLMShape
from aim_vllm.core.importance import pagerank_importance, select_kept_tokens
from aim_vllm.core.merge import merge_frames
from aim_vllm.core.schedule import AimSchedule, preset_schedule
from aim_vllm.core.token_counts import merged_token_count, visual_kept_after_layer

FRAME_TOKENS = 196  # 384x384 frame -> 27x27 SigLIP patches -> 2x2 pooled to 14x14
PREFIX_TOKENS = 14  # chat-template tokens before the video (Qwen2 system + user header)
ROPE_THETA = 1_000_000.0  # Qwen2-7B config
RMS_EPS = 1e-6
INIT_STD = 0.02
SHAPES = {
    "llava-onevision-7b": ARCHITECTURES["llava-onevision-7b"].llm,
    "llava-onevision-0.5b": ARCHITECTURES["llava-onevision-0.5b"].llm,
    # Same structure, small widths: the CPU smoke test.
    "toy": LLMShape(
        hidden_size=256, num_layers=28, intermediate_size=1024, num_heads=4, num_kv_heads=2, head_dim=64
    ),
}
VARIANTS = ("off", "merge", "prune", "aim")


@dataclass
class Layer:
    """One decoder layer's weights (QKV and gate/up fused, as vLLM stores them)."""

    ln1: torch.Tensor
    w_qkv: torch.Tensor
    b_qkv: torch.Tensor
    w_o: torch.Tensor
    ln2: torch.Tensor
    w_gate_up: torch.Tensor
    w_down: torch.Tensor


def init_layers(shape: LLMShape, device: str, dtype: torch.dtype) -> list[Layer]:
    def weight(*size: int) -> torch.Tensor:
        return torch.randn(*size, device=device, dtype=dtype) * INIT_STD

    d, qkv = shape.hidden_size, (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim
    ones = torch.ones(d, device=device, dtype=dtype)
    return [
        Layer(
            ln1=ones,
            w_qkv=weight(qkv, d),
            b_qkv=weight(qkv),
            w_o=weight(d, shape.num_heads * shape.head_dim),
            ln2=ones,
            w_gate_up=weight(2 * shape.intermediate_size, d),
            w_down=weight(d, shape.intermediate_size),
        )  # fmt: skip
        for _ in range(shape.num_layers)
    ]


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(variance + RMS_EPS)).to(x.dtype) * weight


def rope_tables(
    positions: torch.Tensor, head_dim: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [N, head_dim] for the positions (rotate-half layout)."""
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (N, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (N, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, D] rotated by cos/sin [N, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


@dataclass
class Rows:
    """The rows a layer processes: hidden states, their RoPE tables and which are visual."""

    hidden: torch.Tensor  # (N, d)
    cos: torch.Tensor  # (N, D)
    sin: torch.Tensor  # (N, D)
    is_visual: torch.Tensor  # (N,) bool

    def select(self, keep: torch.Tensor) -> Rows:
        return Rows(self.hidden[keep], self.cos[keep], self.sin[keep], self.is_visual[keep])


def layer_forward(layer: Layer, rows: Rows, shape: LLMShape, visual_kept: int | None) -> Rows:
    """One decoder layer; with `visual_kept`, prune to that many visual rows right after attention."""
    n, heads, kv_heads, d_head = rows.hidden.shape[0], shape.num_heads, shape.num_kv_heads, shape.head_dim
    qkv = F.linear(rms_norm(rows.hidden, layer.ln1), layer.w_qkv, layer.b_qkv)
    q, k, v = qkv.split([heads * d_head, kv_heads * d_head, kv_heads * d_head], dim=-1)
    q = apply_rope(q.view(n, heads, d_head), rows.cos, rows.sin)  # (N, H, D)
    k = apply_rope(k.view(n, kv_heads, d_head), rows.cos, rows.sin)  # (N, Hkv, D)
    v = v.view(n, kv_heads, d_head)
    attn = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        is_causal=True,
        enable_gqa=True,
    )  # (1, H, N, D)
    attn = attn[0].transpose(0, 1).reshape(n, heads * d_head)
    if visual_kept is not None:
        keep = select_kept_tokens(pagerank_importance(q, k), rows.is_visual, visual_kept)
        rows, attn = rows.select(keep), attn[keep]
    hidden = rows.hidden + F.linear(attn, layer.w_o)
    gate, up = F.linear(rms_norm(hidden, layer.ln2), layer.w_gate_up).chunk(2, dim=-1)
    hidden = hidden + F.linear(F.silu(gate) * up, layer.w_down)
    return replace(rows, hidden=hidden)


@dataclass
class Prompt:
    """The LLM input before merging: text embeddings around the frames' visual features."""

    prefix: torch.Tensor  # (P, d)
    frames: torch.Tensor  # (F, 196, d)
    suffix: torch.Tensor  # (S, d)


def make_prompt(shape: LLMShape, frames: int, text_tokens: int, device: str, dtype: torch.dtype) -> Prompt:
    if text_tokens <= PREFIX_TOKENS:
        raise ValueError(f"--text-tokens must exceed the {PREFIX_TOKENS} template tokens, got {text_tokens}")
    d = shape.hidden_size
    return Prompt(
        prefix=torch.randn(PREFIX_TOKENS, d, device=device, dtype=dtype),
        frames=torch.randn(frames, FRAME_TOKENS, d, device=device, dtype=dtype),
        suffix=torch.randn(text_tokens - PREFIX_TOKENS, d, device=device, dtype=dtype),
    )


@torch.no_grad()
def prefill(layers: list[Layer], shape: LLMShape, prompt: Prompt, schedule: AimSchedule) -> torch.Tensor:
    """Merge (per frame), then every layer, pruning where the schedule's visual count drops."""
    frames = prompt.frames
    target = merged_token_count(FRAME_TOKENS, schedule.merge_ratio)
    if target < FRAME_TOKENS:
        frames = merge_frames(frames, target)  # (F, target, d)
    visual = frames.reshape(-1, frames.shape[-1])
    hidden = torch.cat([prompt.prefix, visual, prompt.suffix])
    is_visual = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    is_visual[prompt.prefix.shape[0] : prompt.prefix.shape[0] + visual.shape[0]] = True
    positions = torch.arange(hidden.shape[0], device=hidden.device)
    rows = Rows(hidden, *rope_tables(positions, shape.head_dim, hidden.dtype), is_visual)
    kept = visual_kept_after_layer(visual.shape[0], shape.num_layers, schedule.prune_layers)
    entering = [visual.shape[0], *kept[:-1]]
    for layer, keep, before in zip(layers, kept, entering, strict=True):
        rows = layer_forward(layer, rows, shape, keep if keep < before else None)
    return rows.hidden


def variant_schedules(num_layers: int) -> dict[str, AimSchedule]:
    balanced = preset_schedule("balanced", num_layers)
    return {
        "off": AimSchedule(),
        "merge": AimSchedule(balanced.merge_ratio),
        "prune": AimSchedule(1.0, balanced.prune_layers),
        "aim": balanced,
    }


def time_ms(fn, device: str, repeats: int, warmup: int) -> list[float]:
    """Milliseconds of `fn()` per repeat (CUDA events on a GPU) after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - began))
    return times


def measure(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    shape = replace(SHAPES[args.shape], num_layers=args.layers or SHAPES[args.shape].num_layers)
    layers = init_layers(shape, args.device, dtype)
    prompt = make_prompt(shape, args.frames, args.text_tokens, args.device, dtype)
    layout = VisualLayout((FRAME_TOKENS,) * args.frames)
    rows = {}
    for name, schedule in variant_schedules(shape.num_layers).items():
        if name not in args.variants:
            continue
        times = time_ms(
            lambda s=schedule: prefill(layers, shape, prompt, s), args.device, args.repeats, args.warmup
        )
        estimate = estimate_flops(schedule, shape, layout, args.text_tokens)
        rows[name] = {
            "variant": name,
            "merge_ratio": schedule.merge_ratio,
            "prune_layers": list(schedule.prune_layers) if schedule.prune_layers else None,
            "visual_tokens": f"{layout.num_visual} -> {estimate.visual_merged} -> {estimate.visual_kept[-1]}",
            "ms_median": statistics.median(times),
            "ms_min": min(times),
            "tflops_executed": estimate.executed / 1e12,
            "flops_ratio": estimate.executed_ratio,
        }
    return {"config": _config(args, shape), "variants": _with_speedups(rows)}


def _with_speedups(rows: dict[str, dict]) -> list[dict]:
    base = rows.get("off")
    for row in rows.values():
        row["speedup"] = base["ms_median"] / row["ms_median"] if base else None
        row["flops_speedup"] = 1.0 / row["flops_ratio"]
        row["speedup_vs_flops"] = row["speedup"] / row["flops_speedup"] if base else None
    return list(rows.values())


def _config(args: argparse.Namespace, shape: LLMShape) -> dict:
    on_cuda = args.device.startswith("cuda")
    return {
        "bench": "gpu_prefill",
        "device": torch.cuda.get_device_name(args.device)
        if on_cuda
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "shape": args.shape,
        "llm": {**shape.__dict__},
        "frames": args.frames,
        "text_tokens": args.text_tokens,
        "repeats": args.repeats,
        "warmup": args.warmup,
    }


def markdown(result: dict) -> str:
    cols = (
        "variant",
        "visual_tokens",
        "ms_median",
        "speedup",
        "flops_ratio",
        "flops_speedup",
        "speedup_vs_flops",
    )
    lines = ["| " + " | ".join(cols) + " |", "|---|---|" + "---:|" * (len(cols) - 2)]
    for row in result["variants"]:
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llava-onevision-7b", help="LLM dims")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the shape's; windows scale)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--text-tokens", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of off,merge,prune,aim"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    args.variants = args.variants.split(",")
    if unknown := set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; expected some of {', '.join(VARIANTS)}")
    if (
        args.frames < 1
        or args.repeats < 1
        or args.warmup < 0
        or (args.layers is not None and args.layers < 1)
    ):
        parser.error("need --frames >= 1, --repeats >= 1, --warmup >= 0 and --layers >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = measure(args)
    for row in result["variants"]:
        print(json.dumps({**result["config"], **row}))
    print(markdown(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
