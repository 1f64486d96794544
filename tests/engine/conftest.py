"""Engine fixtures: one AIM engine per session (tiny model, fp32); plain vLLM and other
configurations per module, started only by the tests that need them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from aim_vllm.reference_pipeline import ReferenceModel
from server.app import create_app
from server.config import Settings
from tests.engine import servers


@pytest.fixture(scope="session")
def aim_engine(tiny_model_dir, tmp_path_factory):
    """`aim-vllm engine` on the embedded tiny model with AIM's defaults."""
    server = servers.start(tiny_model_dir, tmp_path_factory.mktemp("aim-engine") / "log.txt")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(aim_engine) -> Iterator[str]:
    """The gateway over the session's engine, served by uvicorn in a thread; yields its base URL."""
    settings = Settings(upstreams=[aim_engine.url], upstream_dns=None, default_aim="off", api_keys=[])
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=servers.free_port(), log_config=None,
        access_log=False, lifespan="on",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="session")
def reference(tiny_model_dir) -> ReferenceModel:
    return ReferenceModel(tiny_model_dir)


def pytest_collection_modifyitems(items):
    """Everything under tests/engine starts a vLLM engine."""
    for item in items:
        if "tests/engine/" in str(item.fspath):
            item.add_marker(pytest.mark.engine)
