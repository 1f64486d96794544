"""Engine fixtures: one AIM engine per session (tiny model, fp32); plain vLLM and other
configurations per module, started only by the tests that need them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aim_vllm.reference.pipeline import ReferenceModel
from tests.engine import servers


@pytest.fixture(scope="session")
def aim_engine(tiny_model_dir, tmp_path_factory):
    """`aim-vllm engine` on the embedded tiny model with AIM's defaults (vLLM's own: compiled, prefix
    caching, chunked prefill); requests may bring a chat template (raw-prompt layouts)."""
    log = tmp_path_factory.mktemp("aim-engine") / "log.txt"
    server = servers.start(tiny_model_dir, log, "--trust-request-chat-template", compiled=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(aim_engine) -> Iterator[str]:
    """The gateway over the session's engine, served by uvicorn in a thread; yields its base URL."""
    with servers.running_gateway(aim_engine.url) as url:
        yield url


@pytest.fixture(scope="session")
def reference(tiny_model_dir) -> ReferenceModel:
    return ReferenceModel(tiny_model_dir)


def pytest_collection_modifyitems(items):
    """Everything under tests/engine starts a vLLM engine."""
    for item in items:
        if "tests/engine/" in str(item.fspath):
            item.add_marker(pytest.mark.engine)
