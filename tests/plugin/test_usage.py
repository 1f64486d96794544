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


def _stats(prune=(14, 22), **encoder):
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
        **encoder,
    )


def test_stats_match_the_flops_model() -> None:
    """The paper's LLaVA-OV-7B example (newline included): 6.7x fewer executed FLOPs."""
    stats = _stats()
    assert stats.text_tokens == 100
    assert stats.visual_tokens_kept["14"] == (1569 * 7) // 8
    assert stats.visual_tokens_kept["21"] == 0
    assert "13" not in stats.visual_tokens_kept
    assert 1 / stats.flops_ratio == pytest.approx(6.71, rel=5e-3)


def test_encoder_flops_join_the_whole_prefill() -> None:
    """With its items' encoder FLOPs known, the request reports them and encoder + LLM over AIM off;
    without them only the ratio when the stock tower ran (1.0) is known."""
    stats = _stats(encoder_keep=0.5, encoder_flops=(20e12, 12e12))  # (stock, executed)
    assert (stats.encoder_flops, stats.encoder_flops_off, stats.encoder_flops_ratio) == (12e12, 20e12, 0.6)
    whole = (12e12 + stats.llm_prefill_flops) / (20e12 + stats.llm_prefill_flops_off)
    assert stats.prefill_flops_ratio == pytest.approx(whole)
    assert stats.flops_ratio < stats.prefill_flops_ratio < 0.6
    unknown = _stats(encoder_keep=0.5)
    assert unknown.encoder_flops_ratio is None and unknown.prefill_flops_ratio is None
    stock = _stats()
    assert stock.encoder_flops_ratio == 1.0 and stock.encoder_flops is None


def test_request_step_sums_its_items_encoder_flops() -> None:
    """The runner's view of a request: encoder FLOPs summed over its items, unknown if one lacks them."""
    from types import SimpleNamespace

    from aim_vllm.core.item_params import ItemParams, field_name
    from aim_vllm.core.schedule import AimSchedule
    from aim_vllm.pruning.runner_context import request_step

    schedule = AimSchedule(0.5, encoder_keep=0.5)

    def feature(offset: int, flops: tuple[float, float] | None):
        params = ItemParams(schedule, 40, 0, 0, *flops) if flops else None
        data = {field_name("image"): SimpleNamespace(data=params.to_tensor())} if params else {}
        position = SimpleNamespace(offset=offset, length=20)
        return SimpleNamespace(mm_position=position, data=data, modality="image")

    both = request_step("r", 100, [feature(0, (4.0, 3.0)), feature(30, (6.0, 2.0))], None)
    assert both.encoder_flops == (10.0, 5.0) and both.visual_tokens_in == 80
    one_unknown = request_step("r", 100, [feature(0, (4.0, 3.0)), feature(30, None)], None)
    assert one_unknown.encoder_flops is None
    params = ItemParams(schedule, 40, 0, 0, 4.0, 3.0)
    assert ItemParams.from_tensor(params.to_tensor()) == params


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
