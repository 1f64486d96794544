"""Requests of deploy/smoke.sh, run with the image's own Python (Pillow comes with vLLM).

    python smoke_client.py BASE_URL KIND [KIND ...]     KIND: image | video

Each KIND sends one chat completion at the `balanced` level to the embedded model: an image of a
red square, or an 8-frame video of it moving right (vLLM's `video/jpeg` frame list). A request
passes when it answers `red` and its `usage.aim` reports the level and fewer visual tokens after
merging than before. Prints one JSON line per request on stderr and one word per request on
stdout (`image=ok(1569->393,2.1s)`); exit code 1 if any failed.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import time
import urllib.error
import urllib.request

from PIL import Image, ImageDraw

MODEL = "aim-tiny-llava-onevision"
LEVEL = "balanced"
FRAMES = 8
_SIZE = 384
_TIMEOUT_S = 600


def _frame(t: int) -> Image.Image:
    img = Image.new("RGB", (_SIZE, _SIZE), (128, 128, 128))
    ImageDraw.Draw(img).rectangle((40 + 32 * t, 150, 119 + 32 * t, 229), fill=(220, 30, 30))
    return img


def _b64(img: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def media_part(kind: str) -> dict:
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(_frame(0), "PNG")}}
    if kind == "video":
        frames = ",".join(_b64(_frame(t), "JPEG") for t in range(FRAMES))
        return {"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + frames}}
    raise ValueError(f"KIND must be image or video, got {kind!r}")


def ask(base_url: str, kind: str) -> dict:
    """One request; a summary with `ok` and the reason when it is False."""
    question = {"type": "text", "text": "What colour is the square?"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [media_part(kind), question]}],
        "max_tokens": 4,
        "temperature": 0,
        "aim": LEVEL,
    }
    request = urllib.request.Request(
        base_url.rstrip("/") + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            reply = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        detail = exc.read().decode(errors="replace")[:300] if isinstance(exc, urllib.error.HTTPError) else ""
        return {"kind": kind, "ok": False, "error": f"{exc} {detail}".strip()}
    seconds = round(time.monotonic() - start, 2)
    answer = reply["choices"][0]["message"]["content"].strip()
    aim = reply.get("usage", {}).get("aim") or {}
    summary = {
        "kind": kind,
        "answer": answer,
        "seconds": seconds,
        "level": aim.get("level"),
        "visual_tokens_in": aim.get("visual_tokens_in"),
        "visual_tokens_merged": aim.get("visual_tokens_merged"),
        "flops_ratio": aim.get("flops_ratio"),
    }
    problems = []
    if "red" not in answer.lower():
        problems.append(f"answer {answer!r} is not red")
    if aim.get("level") != LEVEL:
        problems.append(f"usage.aim.level is {aim.get('level')!r}, expected {LEVEL!r}")
    tokens_in, merged = aim.get("visual_tokens_in"), aim.get("visual_tokens_merged")
    if not (isinstance(tokens_in, int) and isinstance(merged, int) and 0 < merged < tokens_in):
        problems.append(f"usage.aim visual tokens {tokens_in} -> {merged}: nothing merged")
    summary["ok"] = not problems
    if problems:
        summary["error"] = "; ".join(problems)
    return summary


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    base_url, kinds = argv[0], argv[1:]
    results = [ask(base_url, kind) for kind in kinds]
    for result in results:
        print(json.dumps(result), file=sys.stderr, flush=True)
    print(" ".join(_word(r) for r in results))
    return 0 if all(r["ok"] for r in results) else 1


def _word(result: dict) -> str:
    if not result["ok"]:
        return f"{result['kind']}=FAIL"
    tokens = f"{result['visual_tokens_in']}->{result['visual_tokens_merged']}"
    return f"{result['kind']}=ok({tokens},{result['seconds']}s)"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
