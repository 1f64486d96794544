"""usage.aim: stats values, the file store shared by worker and API server, the ASGI middleware."""

import json
import os
import time

import pytest

from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.token_counts import visual_kept_after_layer
from aim_vllm.usage import StatsStore, external_request_id, request_stats
from aim_vllm.usage_middleware import AimUsageMiddleware

SHAPE = ARCHITECTURES["llava-onevision-7b"].llm


def _stats(prune=(14, 22)):
    merged = 32 * 49 + 1
    kept = visual_kept_after_layer(merged, 28, prune)
    entering = [merged, *kept[:-1]]
    return request_stats(
        merge_ratio=0.25,
        prune_layers=prune,
        pruning="pruned",
        num_prompt=100 + merged,
        visual_tokens_in=32 * 196 + 1,
        visual_tokens_merged=merged,
        kept_after_layer=kept,
        rows_per_layer=[100 + v for v in entering],
        shape=SHAPE,
    )


def test_stats_match_the_flops_model() -> None:
    """The paper's LLaVA-OV-7B example (newline included): 6.7x fewer executed FLOPs."""
    stats = _stats()
    assert stats.text_tokens == 100
    assert stats.visual_tokens_kept["14"] == (1569 * 7) // 8
    assert stats.visual_tokens_kept["21"] == 0
    assert "13" not in stats.visual_tokens_kept
    assert 1 / stats.flops_ratio == pytest.approx(6.71, rel=5e-3)


def test_engine_ids_map_to_response_ids() -> None:
    assert external_request_id("chatcmpl-abc-1a2b3c4d") == "chatcmpl-abc"


def test_store_put_pop_sweep(tmp_path) -> None:
    store = StatsStore(tmp_path)
    store.put("chatcmpl-x", _stats())
    assert store.pop("chatcmpl-x")["merge_ratio"] == 0.25
    assert store.pop("chatcmpl-x") is None  # taken once
    store.put("../evil", _stats())  # ids never escape the directory
    assert all(p.parent == tmp_path for p in tmp_path.iterdir())
    old = tmp_path / "stale.json"
    old.write_text("{}")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    store.sweep(max_age_s=60)
    assert not old.exists()


async def _run(app, path: str = "/v1/chat/completions") -> tuple[dict, bytes]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": "http", "path": path, "method": "POST"}, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _upstream(content_type: bytes, chunks: list[bytes]):
    async def app(scope, receive, send):
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}
        )
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    return app


@pytest.fixture
def store(tmp_path, monkeypatch) -> StatsStore:
    monkeypatch.setenv("AIM_VLLM_STATS_DIR", str(tmp_path))
    store = StatsStore(tmp_path)
    store.put("chatcmpl-1", _stats())
    return store


async def test_json_response_gets_usage_aim(store) -> None:
    body = json.dumps({"id": "chatcmpl-1", "usage": {"prompt_tokens": 3}}).encode()
    app = AimUsageMiddleware(_upstream(b"application/json", [body[:10], body[10:]]))
    start, out = await _run(app)
    payload = json.loads(out)
    assert payload["usage"]["aim"]["visual_tokens_in"] == 32 * 196 + 1
    assert dict(start["headers"])[b"content-length"] == str(len(out)).encode()


async def test_stream_usage_chunk_gets_usage_aim(store) -> None:
    """The SSE event carrying usage (split across body chunks) gets `aim`; others pass unchanged."""
    first = b'data: {"id": "chatcmpl-1", "choices": [], "usage": null}\n\n'
    last = b'data: {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 3}}\n\ndata: [DONE]\n\n'
    app = AimUsageMiddleware(_upstream(b"text/event-stream", [first, last[:30], last[30:]]))
    _, out = await _run(app)
    events = [e for e in out.split(b"\n\n") if e]
    assert events[0] == first.strip()
    assert json.loads(events[1][len(b"data: ") :])["usage"]["aim"]["pruning"] == "pruned"
    assert events[2] == b"data: [DONE]"


async def test_other_routes_pass_through(store) -> None:
    body = json.dumps({"id": "chatcmpl-1", "usage": {}}).encode()
    _, out = await _run(AimUsageMiddleware(_upstream(b"application/json", [body])), path="/v1/models")
    assert out == body
