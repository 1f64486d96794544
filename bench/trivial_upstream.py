"""A trivial OpenAI-style upstream for measuring the gateway's own cost (stdlib only).

Answers `/health`, `/v1/models` and non-streaming `/v1/chat/completions` at once, with a fixed
completion and a `usage.aim` object, over HTTP/1.1 keep-alive (as vLLM's uvicorn server does;
TCP_NODELAY, so headers and body never wait on delayed ACKs). Started by
`bench/gateway_overhead.py --upstream trivial`; run alone with `--port P`. Its `Handler` is also
the base of the tests' fake engines (they answer chat completions their own way).
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "trivial"
_AIM = {"merge_ratio": 1.0, "pruning": "not requested", "flops_ratio": 1.0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    model = MODEL  # the id /v1/models lists

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/health":
            self._send(200, {})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        usage = {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12, "aim": _AIM}
        choice = {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}
        answer = {"id": "chatcmpl-0", "object": "chat.completion", "created": 0, "model": MODEL}
        self._send(200, {**answer, "choices": [choice], "usage": usage})

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args, _ = parser.parse_known_args()  # takes (and ignores) the engine flags `serve` passes
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
