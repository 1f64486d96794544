"""`/docs` in a real headless browser (Debian's Chromium), against a gateway on a local socket.

Skipped where `/usr/bin/chromium` is not installed (`apt-get install chromium`): the project's
install does not bring a browser. Swagger UI renders from the gateway's own assets only, so the
page must show the chat-completions operation with no network beyond the gateway.
"""

from __future__ import annotations

import html
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from server.app import create_app
from tests.server.fakes import FakeCluster, settings_for

CHROMIUM = Path("/usr/bin/chromium")
_PAGE_BUDGET_MS = 20_000  # virtual time for Swagger UI to fetch /openapi.json and render

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (/usr/bin/chromium)")


@pytest.fixture
def gateway_url() -> Iterator[str]:
    """A gateway (fake replica) served by uvicorn in a thread, on a free local port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cluster = FakeCluster("a")
    app = create_app(settings_for(cluster), transport=cluster.transport, resolver=cluster.resolve)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the gateway did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _rendered_text(url: str, profile: Path) -> tuple[str, str]:
    """(DOM, its visible text) of `url` once Chromium's virtual-time budget has run out."""
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", f"--virtual-time-budget={_PAGE_BUDGET_MS}", "--dump-dom", url,
    ]  # fmt: skip
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    return dom, html.unescape(re.sub(r"<[^>]+>", "", dom))


def test_docs_page_shows_the_chat_operation_with_its_aim_field(gateway_url: str, tmp_path: Path) -> None:
    """A user opening /docs (deep link to the chat operation) sees the operation, the X-AIM-Level
    header and a request example carrying `aim`: Swagger UI loaded and read /openapi.json."""
    dom, text = _rendered_text(f"{gateway_url}/docs#/chat/createChatCompletion", tmp_path / "profile")
    assert 'data-path="/v1/chat/completions"' in dom
    assert "opblock-post is-open" in dom, "the chat operation did not expand"
    assert "X-AIM-Level" in text
    assert '"aim": "balanced"' in text
    assert "Unable to render this definition" not in text
