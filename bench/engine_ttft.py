"""TTFT of AIM levels against AIM off, on one engine, in one run (levels are per request).

Run (the numbers in the README):
  .venv/bin/python bench/engine_ttft.py --frames 8 --reps 2 --out runs/ttft
Default model: LLaVA-OneVision-0.5B shapes with dummy weights (bf16). `--model DIR` for another.

Per repetition and level (levels interleaved, order rotated per repetition against drift):
- fresh: a new random video (nothing cached) -> end-to-end TTFT (vision encoder + merge + LLM);
- repeat: the same request again -> vLLM reuses the encoder output (the merged embedding for
  merged levels), so the time is the LLM prefill alone ("LLM part").
TTFT is the latency of a `max_tokens=1` request (prefill + one sampled token). Reported: medians,
ratios to off, LLM prefill throughput, the engine's executed FLOPs ratio (`usage.aim`), the LLM-part
speedup divided by the FLOPs speedup (goal >= 0.8), and the Amdahl bound of the end-to-end speedup
given the measured encoder share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from aim_vllm.media import jpeg_video_data_url, random_video

LEVELS = {
    "off": {},
    "merge": {"aim_merge_ratio": 0.25},
    "prune": "paper-window",
    "both": {"aim_preset": "balanced"},
}


def level_kwargs(name: str, num_layers: int) -> dict:
    from aim_vllm.core.schedule import paper_prune_layers

    if LEVELS[name] == "paper-window":
        l1, l2 = paper_prune_layers(num_layers)
        return {"aim_prune_l1": l1, "aim_prune_l2": l2}
    return dict(LEVELS[name])


def video_data_url(seed: int, frames: int) -> str:
    return jpeg_video_data_url(random_video(seed, frames))[0]


def request(client: httpx.Client, url: str, model: str, video: str, aim: dict) -> tuple[float, dict]:
    body = {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": video}},
                    {"type": "text", "text": "Describe the video."},
                ],
            }
        ],
        "max_tokens": 1,
        "temperature": 0,
        "mm_processor_kwargs": aim,
    }
    start = time.perf_counter()
    response = client.post(url + "/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed, response.json()["usage"]


def start_engine(model: str | None, dummy: bool, log_dir: Path):
    from aim_vllm.commands.serve import start_replica, wait_ready
    from aim_vllm.model_builders import default_model_dir

    if model is None:
        model = str(default_model_dir("llava-onevision", "0.5b"))
    flags = ["--load-format", "dummy", "--dtype", "bfloat16"] if dummy else []
    replica = start_replica(0, model, [*flags, "--max-model-len", "16384"], log_dir)
    wait_ready([replica], timeout_s=1800)
    return replica, model


def measure(args: argparse.Namespace) -> dict:
    from aim_vllm.commands.serve import stop_replicas

    log_dir = Path(tempfile.mkdtemp(prefix="aim-bench-"))
    replica, model = start_engine(args.model, args.model is None or args.dummy, log_dir)
    num_layers = json.loads((Path(model) / "config.json").read_text())["text_config"]["num_hidden_layers"]
    samples: dict[str, dict[str, list]] = {
        name: {"fresh": [], "repeat": [], "usage": []} for name in args.levels
    }
    seed = 1000
    try:
        with httpx.Client(timeout=3600) as client:
            request(client, replica.url, model, video_data_url(seed, args.frames), {})  # warm-up
            for rep in range(args.reps):
                order = args.levels[rep % len(args.levels) :] + args.levels[: rep % len(args.levels)]
                for name in order:
                    seed += 1
                    video, aim = video_data_url(seed, args.frames), level_kwargs(name, num_layers)
                    fresh, usage = request(client, replica.url, model, video, aim)
                    repeat, _ = request(client, replica.url, model, video, aim)
                    samples[name]["fresh"].append(fresh)
                    samples[name]["repeat"].append(repeat)
                    samples[name]["usage"].append(usage)
                    print(
                        json.dumps(
                            {
                                "rep": rep,
                                "level": name,
                                "fresh_s": fresh,
                                "repeat_s": repeat,
                                "prompt_tokens": usage["prompt_tokens"],
                            }
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        stop_replicas([replica], grace_s=30)
    return summarise(samples, args, model)


def summarise(samples: dict, args: argparse.Namespace, model: str) -> dict:
    rows = {}
    for name, data in samples.items():
        usage = data["usage"][-1]
        aim = usage.get("aim", {})
        rows[name] = {
            "ttft_s": statistics.median(data["fresh"]),
            "llm_ttft_s": statistics.median(data["repeat"]),
            "prompt_tokens": usage["prompt_tokens"],
            "flops_ratio": aim.get("flops_ratio", 1.0),
            "pruning": aim.get("pruning", "n/a"),
        }
    off = rows["off"]
    encoder_share = max(0.0, (off["ttft_s"] - off["llm_ttft_s"]) / off["ttft_s"])
    for row in rows.values():
        row["ttft_ratio"] = row["ttft_s"] / off["ttft_s"]
        row["llm_speedup"] = off["llm_ttft_s"] / row["llm_ttft_s"]
        row["prefill_tokens_per_s"] = row["prompt_tokens"] / row["llm_ttft_s"]
        row["flops_speedup"] = 1.0 / row["flops_ratio"]
        row["llm_speedup_vs_flops"] = row["llm_speedup"] / row["flops_speedup"]
        row["amdahl_bound_speedup"] = 1.0 / (encoder_share + (1 - encoder_share) * row["flops_ratio"])
        row["e2e_speedup"] = off["ttft_s"] / row["ttft_s"]
    return {
        "model": model,
        "frames": args.frames,
        "reps": args.reps,
        "encoder_share_off": encoder_share,
        "levels": rows,
    }


def markdown(result: dict) -> str:
    cols = [
        "ttft_s",
        "e2e_speedup",
        "amdahl_bound_speedup",
        "llm_ttft_s",
        "llm_speedup",
        "flops_speedup",
        "llm_speedup_vs_flops",
        "prefill_tokens_per_s",
        "prompt_tokens",
    ]
    lines = ["| level | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in result["levels"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="checkpoint dir (default: LLaVA-OV-0.5B shapes, dummy weights)")
    parser.add_argument("--dummy", action="store_true", help="--load-format dummy for --model")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--levels", default="off,merge,prune,both")
    parser.add_argument("--out", type=Path, help="directory for result.json and result.md")
    args = parser.parse_args()
    args.levels = args.levels.split(",")
    result = measure(args)
    table = markdown(result)
    print(json.dumps(result))
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps(result, indent=2))
        (args.out / "result.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
