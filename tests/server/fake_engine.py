"""A stand-in for `aim-vllm engine` (stdlib only), started by `aim-vllm serve` in tests.

Takes the engine's `--port`/`--host` (ignores other flags), records its argv and pid (and the pid
of a child it starts, to check process-group cleanup) in $FAKE_ENGINE_DIR/<port>.json, then per
$FAKE_ENGINE_MODE: `ok` serves /health, /v1/models and non-streaming chat completions;
`never-ready` logs and never listens; `crash` logs and exits with code 3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from bench import trivial_upstream


class Handler(trivial_upstream.Handler):
    protocol_version = "HTTP/1.0"  # one connection per request, as these tests always had
    model = "fake"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2,
                 "aim": {"received": body.get("mm_processor_kwargs")}}  # fmt: skip
        message = {"role": "assistant", "content": f"port {self.server.server_port}"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                         "choices": [choice], "usage": usage})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", required=True)
    args, _ = parser.parse_known_args()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    record = {"argv": sys.argv[1:], "pid": os.getpid(), "child_pid": child.pid}
    Path(os.environ["FAKE_ENGINE_DIR"], f"{args.port}.json").write_text(json.dumps(record))
    print("fake engine: loading weights", flush=True)
    mode = os.environ.get("FAKE_ENGINE_MODE", "ok")
    if mode == "crash":
        print("fake engine: out of memory", flush=True)
        sys.exit(3)
    if mode == "never-ready":
        time.sleep(600)
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
