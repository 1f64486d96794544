"""A stand-in for a vLLM engine that streams chat completions (stdlib only), for bench tests.

Takes `--port`/`--host` (ignores other flags); serves /health, /v1/models, /tokenize (a token per
word) and streaming chat completions: a role chunk, `max_tokens` token chunks (text and
`token_ids`), a usage chunk and `[DONE]`. `usage.aim` mimics the AIM engine from the request's
`mm_processor_kwargs` (none when the request has none, like plain vLLM): `balanced` reports merge
0.25 and pruning layers [3, 5].
With $FAKE_ENGINE_LOG set, appends one JSON line per chat request: its `mm_processor_kwargs`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from http.server import ThreadingHTTPServer

from bench import trivial_upstream

TOKEN_DELAY_S = 0.001


def aim_usage(kwargs: dict | None) -> dict | None:
    """What the AIM engine would report for these `mm_processor_kwargs` (None: no plugin)."""
    if kwargs is None:
        return None
    off = kwargs in ({}, {"aim_preset": "off"})
    balanced = kwargs.get("aim_preset") == "balanced"
    return {
        "merge_ratio": 0.25 if balanced else kwargs.get("aim_merge_ratio", 1.0),
        "prune_layers": [3, 5] if balanced else None,
        "pruning": "not requested" if off else "pruned",
        "visual_tokens_in": 100,
        "visual_tokens_merged": 100 if off else 25,
        "flops_ratio": 1.0 if off else 0.25,
        "received": kwargs,
    }


class Handler(trivial_upstream.Handler):
    model = "fake"

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path == "/tokenize":
            answer = json.dumps({"count": len(body["prompt"].split())}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        if os.environ.get("FAKE_ENGINE_LOG"):
            with open(os.environ["FAKE_ENGINE_LOG"], "a") as log:
                log.write(json.dumps(body.get("mm_processor_kwargs")) + "\n")
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        tokens = int(body.get("max_tokens", 4))
        for index in range(tokens):
            time.sleep(TOKEN_DELAY_S)
            self._event({"choices": [{"index": 0, "delta": {"content": f"t{index} "}, "token_ids": [index]}]})
        usage = {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}
        aim = aim_usage(body.get("mm_processor_kwargs"))
        if aim is not None:
            usage["aim"] = aim
        self._event({"choices": [], "usage": usage})
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _event(self, payload: dict) -> None:
        event = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", **payload}
        self._chunk(f"data: {json.dumps(event)}\n\n".encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", required=True)
    args, _ = parser.parse_known_args()
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
