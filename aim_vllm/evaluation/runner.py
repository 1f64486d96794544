"""Sending a data set through the gateway at each level: bounded concurrency, resumable results.

Each (item, level) becomes one streamed chat completion (greedy, `stream_options.include_usage`)
with the level in the `X-AIM-Level` header. A result line records the answer, correctness, TTFT,
latency and the engine's `usage.aim`; results already in the output file are not asked again.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from aim_vllm.core.level import parse_text
from aim_vllm.core.schedule import VIDEO_ONLY_METHODS
from aim_vllm.evaluation.scoring import is_correct
from aim_vllm.media import image_part, jpeg_video_data_url, png_data_url, video_part
from aim_vllm.synthetic import load_media, prompt_text


@dataclass
class Result:
    id: str
    level: str
    answer: str
    correct: bool
    ttft_s: float
    latency_s: float
    prompt_tokens: int
    aim: dict[str, Any]
    error: str = ""


def content_parts(item: dict, root: Path) -> list[dict]:
    """The item's media as OpenAI content parts (data URLs; a given `url` is passed on) + its text."""
    parts = []
    for entry in item["media"]:
        if "url" in entry:
            parts.append(image_part(entry["url"]) if entry["type"] == "image" else video_part(entry["url"]))
        elif entry["type"] == "image":
            parts.append(image_part(png_data_url(load_media(entry, root))))
        else:
            parts.append(video_part(jpeg_video_data_url(load_media(entry, root))[0]))
    return parts


async def ask(
    client: httpx.AsyncClient, model: str, item: dict, parts: list[dict], level: str, free_form: bool
):
    """One streamed request; returns a Result (errors are recorded, not raised)."""
    text = prompt_text(item["question"], None if free_form else item["options"])
    body = {
        "model": model,
        "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, first, answer, usage = time.perf_counter(), None, [], {}
    try:
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers={"X-AIM-Level": level}
        ) as r:
            if r.status_code != 200:
                detail = (await r.aread()).decode(errors="replace")[:300]
                return Result(
                    item["id"], level, "", False, 0.0, 0.0, 0, {}, f"HTTP {r.status_code}: {detail}"
                )
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece and first is None:
                        first = time.perf_counter()
                    answer.append(piece)
                usage = event.get("usage") or usage
    except httpx.HTTPError as exc:
        return Result(item["id"], level, "", False, 0.0, 0.0, 0, {}, f"{type(exc).__name__}: {exc}")
    end = time.perf_counter()
    reply = "".join(answer)
    return Result(
        item["id"],
        level,
        reply,
        is_correct(reply, item, free_form),
        (first or end) - start,
        end - start,
        usage.get("prompt_tokens", 0),
        usage.get("aim", {}),
    )


def applies(item: dict, level: str) -> bool:
    """Whether `level` is asked of `item`: a video-only reduction (EVS) skips items with images."""
    schedule = parse_text(level).schedule
    if schedule is None or schedule.merge_method not in VIDEO_ONLY_METHODS:
        return True
    return all(entry["type"] != "image" for entry in item["media"])


def done_keys(path: Path) -> set[tuple[str, str]]:
    """(id, level) pairs already answered without error in the results file."""
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if not record.get("error"):
                keys.add((record["id"], record["level"]))
    return keys


async def run_all(
    url: str,
    model: str,
    items: list[dict],
    root: Path,
    levels: list[str],
    out: Path,
    concurrency: int = 4,
    free_form: bool = False,
    progress=None,
) -> None:
    """Ask every (item, level) not yet in `out` (appending results as they come)."""
    done = done_keys(out)
    # Levels interleaved per item: drift of the machine hits every level alike.
    jobs = [
        (item, level)
        for item in items
        for level in levels
        if (item["id"], level) not in done and applies(item, level)
    ]
    semaphore = asyncio.Semaphore(concurrency)
    parts_cache: dict[str, list[dict]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0)) as client:

        async def one(item: dict, level: str) -> None:
            async with semaphore:
                if item["id"] not in parts_cache:
                    parts_cache[item["id"]] = content_parts(item, root)
                result = await ask(client, model, item, parts_cache[item["id"]], level, free_form)
            with out.open("a") as handle:
                handle.write(json.dumps(asdict(result)) + "\n")
            if progress is not None:
                progress.update(1)

        await asyncio.gather(*(one(item, level) for item, level in jobs))
