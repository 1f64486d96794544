"""A trivial OpenAI-style upstream for measuring the gateway's own cost (stdlib only).

Answers `/health`, `/v1/models` and non-streaming `/v1/chat/completions` at once, with a fixed
completion and a `usage.aim` object, over HTTP/1.1 keep-alive. `main` serves them from one
asyncio event loop, as vLLM's API server does (uvicorn): started by
`bench/gateway_overhead.py --upstream trivial`; run alone with `--port P`. A thread-per-connection
server (`http.server`) on the CPU it shares with the load client made a request's answer wait
whenever the thread holding the GIL was descheduled: tens of milliseconds, the gateway's p99.
`Handler` (`http.server`) is the base of the tests' fake engines, which answer chat completions
their own way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

MODEL = "trivial"
_AIM = {"merge_ratio": 1.0, "pruning": "not requested", "flops_ratio": 1.0}
_CHAT = {
    "id": "chatcmpl-0", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12, "aim": _AIM},
}  # fmt: skip


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
        self._send(200, _CHAT)

    def log_message(self, *args: object) -> None:
        pass


def _answer(status: int, payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


ANSWERS = {
    ("GET", "/health"): _answer(200, {}),
    ("GET", "/v1/models"): _answer(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]}),
    ("POST", "/v1/chat/completions"): _answer(200, _CHAT),
}
NOT_FOUND = _answer(404, {"error": {"message": "not found"}})


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Requests of one keep-alive connection, answered in order (HTTP/1.1, Content-Length bodies)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(ANSWERS.get((method, path), NOT_FOUND))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(serve_connection, host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args, _ = parser.parse_known_args()  # takes (and ignores) the engine flags `serve` passes
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
