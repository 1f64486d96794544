"""The gateway end to end against fake replicas: proxying, knob contract, usage.aim, auth, error shapes."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import anyio
import pytest

from server.log import JsonFormatter
from tests.server.fakes import (
    ENGINE_AIM,
    FakeCluster,
    asgi_call,
    chat_body,
    data_url,
    image_part,
    png_bytes,
    running_gateway,
    sse_events,
)

CHAT = "/v1/chat/completions"


def test_gateway_never_imports_torch_or_vllm() -> None:
    """The gateway image stays slim and starts fast only if torch/vLLM never load (fresh process)."""
    code = "import sys, server.app, server.config; print(sorted({'torch', 'vllm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_non_streaming_passthrough_with_usage_aim_level() -> None:
    """The engine's usage.aim reaches the client unchanged, plus the normalised level the client asked for."""
    cluster = FakeCluster("a")
    async with running_gateway(cluster) as (_, client):
        response = await client.post(
            CHAT, json=chat_body(aim={"merge_ratio": 0.25, "prune_layers": [14, 22]})
        )
    body = response.json()
    assert response.status_code == 200
    assert body["choices"][0]["message"]["content"] == "Hello!"
    assert body["usage"]["aim"] == {**ENGINE_AIM, "level": "merge:0.25,prune:14-22"}
    assert body["usage"]["prompt_tokens"] == 10


async def test_engine_without_usage_aim_gets_level_only() -> None:
    """Replicas without the AIM plugin (or text-only answers) still tell the client which level applied."""
    cluster = FakeCluster("a")
    cluster["a"].aim = None
    async with running_gateway(cluster, default_aim="light") as (_, client):
        response = await client.post(CHAT, json=chat_body())
    assert response.json()["usage"]["aim"] == {"level": "light"}


@pytest.mark.parametrize(
    ("body_aim", "header", "default", "sent"),
    [
        (None, None, "off", {"aim_preset": "off"}),
        (None, None, "budget:0.4", {"aim_budget": 0.4}),
        ("max", None, "off", {"aim_preset": "max"}),
        ({"budget": 0.2}, "light", "off", {"aim_budget": 0.2}),
        (None, "merge:0.5,prune:3-9", "off", {"aim_merge_ratio": 0.5, "aim_prune_l1": 3, "aim_prune_l2": 9}),
        ({"merge_ratio": 0.25}, None, "max", {"aim_merge_ratio": 0.25}),
    ],
)
async def test_knob_reaches_the_engine_only_as_mm_processor_kwargs(
    body_aim: object, header: str | None, default: str, sent: dict
) -> None:
    """The engine contract: `aim` never reaches vLLM; the validated knob travels in mm_processor_kwargs."""
    cluster = FakeCluster("a")
    headers = {"X-AIM-Level": header} if header else {}
    extra = {} if body_aim is None else {"aim": body_aim}
    async with running_gateway(cluster, default_aim=default) as (_, client):
        response = await client.post(CHAT, json=chat_body(**extra), headers=headers)
    assert response.status_code == 200
    (forwarded,) = cluster["a"].bodies
    assert forwarded["mm_processor_kwargs"] == sent
    assert "aim" not in forwarded


async def test_engine_overrides_are_dropped_and_other_fields_pass_through() -> None:
    """Clients must not steer processor, media loader or templates; every other field is forwarded as sent."""
    cluster = FakeCluster("a")
    hostile = {
        "mm_processor_kwargs": {"aim_merge_ratio": 0.01, "max_pixels": 10**9},
        "media_io_kwargs": {"video": {"num_frames": 100000}},
        "vllm_xargs": {"x": 1},
        "chat_template": "{{ ''.__class__ }}",
        "kv_transfer_params": {"do_remote_prefill": True},
    }
    passthrough = {"ignore_eos": True, "temperature": 0, "future_field": {"nested": [1, 2]}, "user": "u1"}
    async with running_gateway(cluster) as (_, client):
        response = await client.post(CHAT, json=chat_body(aim="balanced", **hostile, **passthrough))
    (forwarded,) = cluster["a"].bodies
    assert response.status_code == 200
    assert forwarded["mm_processor_kwargs"] == {"aim_preset": "balanced"}
    assert not {"media_io_kwargs", "vllm_xargs", "chat_template", "kv_transfer_params"} & set(forwarded)
    assert {key: forwarded[key] for key in passthrough} == passthrough


async def test_invalid_knob_is_400_before_any_replica_is_contacted() -> None:
    """A bad level must not cost a replica anything, and the error names the field or header."""
    cluster = FakeCluster("a")
    async with running_gateway(cluster) as (_, client):
        by_body = await client.post(CHAT, json=chat_body(aim={"budget": 2}))
        by_header = await client.post(CHAT, json=chat_body(), headers={"X-AIM-Level": "budget:two"})
    assert (by_body.status_code, by_body.json()["error"]["param"]) == (400, "aim.budget")
    assert (by_header.status_code, by_header.json()["error"]["param"]) == (400, "X-AIM-Level")
    assert cluster["a"].bodies == []


async def test_streaming_passthrough_adds_level_to_the_usage_chunk() -> None:
    """SSE events arrive in order and unchanged; the final usage chunk carries usage.aim with the level."""
    cluster = FakeCluster("a")
    body = chat_body(stream=True, stream_options={"include_usage": True})
    async with running_gateway(cluster) as (_, client):
        response = await client.post(CHAT, json=body, headers={"X-AIM-Level": "budget:0.3"})
    events = sse_events(response.content)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello!"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["aim"] == {**ENGINE_AIM, "level": "budget:0.3"}


async def test_stream_without_include_usage_hides_the_gateways_usage_chunk() -> None:
    """The gateway always asks for usage (for metrics) but a client that did not ask must not receive it."""
    cluster = FakeCluster("a")
    async with running_gateway(cluster) as (_, client):
        response = await client.post(CHAT, json=chat_body(stream=True))
        metrics = (await client.get("/metrics")).text
    events = sse_events(response.content)
    assert cluster["a"].bodies[0]["stream_options"] == {"include_usage": True}
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(event) for event in events[:-1])
    assert 'aim_gateway_flops_ratio_count{level="off"} 1.0' in metrics


async def test_metrics_aggregate_usage_aim_and_ttft_by_level() -> None:
    """Operators read AIM's savings from /metrics: token counters, FLOPs ratio and TTFT labelled by level."""
    cluster = FakeCluster("a")
    async with running_gateway(cluster) as (_, client):
        await client.post(CHAT, json=chat_body(aim="balanced"))
        await client.post(CHAT, json=chat_body(aim="balanced", stream=True))
        await client.post(CHAT, json=chat_body(aim={"merge_ratio": 0.5}))
        await client.post(CHAT, json=chat_body(n=3))
        text = (await client.get("/metrics")).text
    assert 'aim_gateway_visual_tokens_in_total{level="balanced"} 1458.0' in text
    assert 'aim_gateway_visual_tokens_merged_total{level="balanced"} 366.0' in text
    assert 'aim_gateway_flops_ratio_bucket{le="0.25",level="balanced"} 2.0' in text
    assert 'aim_gateway_kv_blocks_total{level="balanced"} 10.0' in text
    assert 'aim_gateway_kv_blocks_saved_total{level="balanced"} 2.0' in text
    assert 'aim_gateway_flops_ratio_count{level="custom"} 1.0' in text
    assert 'aim_gateway_ttft_seconds_count{level="balanced"} 1.0' in text
    assert 'aim_gateway_requests_total{route="/v1/chat/completions",status="200"} 3.0' in text
    assert 'aim_gateway_requests_total{route="/v1/chat/completions",status="400"} 1.0' in text
    assert 'aim_gateway_replica_healthy{replica="http://a:8000"} 1.0' in text


async def test_request_id_in_out_and_upstream() -> None:
    """One id follows a request through client, gateway logs and vLLM; unusable ids are replaced."""
    cluster = FakeCluster("a")
    async with running_gateway(cluster) as (_, client):
        given = await client.post(CHAT, json=chat_body(), headers={"X-Request-Id": "trace-42"})
        odd = await client.post(CHAT, json=chat_body(), headers={"X-Request-Id": "bad id\twith spaces"})
        none = await client.get("/health")
    assert given.headers["x-request-id"] == "trace-42"
    assert cluster["a"].headers[0]["x-request-id"] == "trace-42"
    assert odd.headers["x-request-id"] != "bad id\twith spaces"
    assert cluster["a"].headers[1]["x-request-id"] == odd.headers["x-request-id"]
    assert len(none.headers["x-request-id"]) == 32


async def test_api_keys() -> None:
    """Bearer keys guard /v1/*; failures are OpenAI-shaped 401s; operational endpoints stay open."""
    cluster = FakeCluster("a")
    async with running_gateway(cluster, api_keys=["key-one", "key-two"], upstream_api_key="replica-key") as (
        _,
        c,
    ):
        missing = await c.post(CHAT, json=chat_body())
        wrong = await c.post(CHAT, json=chat_body(), headers={"Authorization": "Bearer key-three"})
        basic = await c.post(CHAT, json=chat_body(), headers={"Authorization": "Basic key-one"})
        good = await c.post(CHAT, json=chat_body(), headers={"Authorization": "Bearer key-two"})
        models = await c.get("/v1/models")
        open_paths = [(await c.get(path)).status_code for path in ("/health", "/ready", "/metrics")]
    for response in (missing, wrong, basic, models):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    assert good.status_code == 200
    assert cluster["a"].headers[0]["authorization"] == "Bearer replica-key"
    assert open_paths == [200, 200, 200]


async def test_logs_are_json_with_request_id_and_never_hold_keys() -> None:
    """Keys must not leak into logs (they are shipped to third parties); every line carries the request id."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        cluster = FakeCluster("a")
        async with running_gateway(cluster, api_keys=["sk-secret-123"], upstream_api_key="sk-up-456") as (
            _,
            c,
        ):
            for key in ("sk-secret-123", "sk-wrong-789"):
                await c.post(
                    CHAT, json=chat_body(), headers={"Authorization": f"Bearer {key}", "X-Request-Id": "r1"}
                )
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "server.access"]
    assert [line["status"] for line in access] == [200, 401]
    assert all(line["request_id"] == "r1" for line in access)
    assert not any(secret in stream.getvalue() for secret in ("sk-secret-123", "sk-wrong-789", "sk-up-456"))


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [("GET", "/v1/completions", 404, "not_found"), ("GET", "/invocations", 404, "not_found"),
     ("GET", CHAT, 405, "method_not_allowed"), ("DELETE", "/health", 405, "method_not_allowed"),
     ("POST", CHAT + "/", 404, "not_found")],
)  # fmt: skip
async def test_unknown_paths_and_methods_are_openai_errors(
    method: str, path: str, status: int, code: str
) -> None:
    """Stock vLLM answers {"detail": ...}; clients parse {"error": {...}}. /invocations must not exist."""
    async with running_gateway(FakeCluster("a")) as (_, client):
        response = await client.request(method, path)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["code"] == code


async def test_body_and_header_caps() -> None:
    """Oversized bodies are 413 (declared or streamed), oversized headers 431, both in the OpenAI shape."""
    async with running_gateway(FakeCluster("a"), max_body_bytes=2048, max_headers=20) as (_, client):
        declared = await client.post(CHAT, json=chat_body("x" * 5000))

        async def chunks():
            for _ in range(10):
                yield b"x" * 1000

        streamed = await client.post(CHAT, content=chunks())
        headers = await client.post(CHAT, json=chat_body(), headers={f"x-h{i}": "v" for i in range(30)})
    assert declared.status_code == streamed.status_code == 413
    assert headers.status_code == 431
    assert all(r.json()["error"]["type"] == "invalid_request_error" for r in (declared, streamed, headers))


async def test_replica_4xx_passes_through_and_5xx_becomes_502() -> None:
    """Knob values that do not fit the model come back as the engine's 400; replica crashes are a 502."""
    cluster = FakeCluster("a")
    async with running_gateway(cluster) as (_, client):
        cluster["a"].status = 400
        message = "prune_layers (30, 40) need l2 <= 24"
        cluster["a"].error = {
            "error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}
        }
        bad_level = await client.post(CHAT, json=chat_body(aim="merge:0.5,prune:30-40", stream=True))
        cluster["a"].status = 500
        cluster["a"].error = {"detail": "Internal Server Error"}
        crashed = await client.post(CHAT, json=chat_body())
    assert bad_level.status_code == 400
    assert bad_level.json()["error"]["message"] == "prune_layers (30, 40) need l2 <= 24"
    assert crashed.status_code == 502
    assert crashed.json()["error"]["type"] == "upstream_error"


async def test_stream_broken_after_first_bytes_ends_with_error_event_and_done() -> None:
    """Once bytes went out a retry is impossible; the client must get a parseable error and a clean end."""
    cluster = FakeCluster("a", "b")
    for replica in (cluster["a"], cluster["b"]):
        replica.break_streams = anyio.Event()
        replica.break_streams.set()
    async with running_gateway(cluster) as (app, client):
        response = await client.post(CHAT, json=chat_body(stream=True))
        assert sum(r.healthy for r in app.state.gateway.pool.replicas) == 1
    events = sse_events(response.content)
    assert response.status_code == 200
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(events[-2])["error"]["type"] == "upstream_error"
    assert events[-1] == "[DONE]"


async def test_models_come_from_a_healthy_replica() -> None:
    """GET /v1/models is what SDKs call first; it must skip dead replicas."""
    cluster = FakeCluster("a", "b")
    cluster["a"].down = True
    async with running_gateway(cluster) as (_, client):
        response = await client.get("/v1/models")
    assert response.json()["data"][0]["id"] == "tiny"


async def test_timeout_is_504_or_a_stream_error_event() -> None:
    """A replica that stops answering must not hold the client forever (per-request deadline)."""
    cluster = FakeCluster("a")
    cluster["a"].gate = anyio.Event()  # never set
    async with running_gateway(cluster, request_timeout_s=0.2) as (app, client):
        plain = await client.post(CHAT, json=chat_body())
        streamed = await client.post(CHAT, json=chat_body(stream=True))
        outstanding = app.state.gateway.pool.replicas[0].outstanding
    assert plain.status_code == 504
    events = sse_events(streamed.content)
    assert json.loads(events[-2])["error"]["type"] == "timeout_error"
    assert events[-1] == "[DONE]"
    assert outstanding == 0


async def test_client_disconnect_cancels_the_upstream_stream() -> None:
    """vLLM keeps generating for a vanished client unless the gateway closes the upstream request."""
    cluster = FakeCluster("a")
    replica = cluster["a"]
    replica.gate = anyio.Event()  # hold the stream after its first chunk
    replica.stream_started_event = anyio.Event()
    disconnect = anyio.Event()
    async with running_gateway(cluster) as (app, _):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                sent: list = []

                async def call() -> None:
                    sent.extend(
                        await asgi_call(app, CHAT, json.dumps(chat_body(stream=True)).encode(), disconnect)
                    )

                group.start_soon(call)
                await replica.stream_started_event.wait()
                disconnect.set()
        outstanding = app.state.gateway.pool.replicas[0].outstanding
    assert replica.streams_closed_early == 1
    assert outstanding == 0
    assert sent[0]["status"] == 200


async def test_client_disconnect_cancels_a_waiting_non_streaming_request() -> None:
    """The same for a non-streaming request still waiting for its answer."""
    cluster = FakeCluster("a")
    replica = cluster["a"]
    replica.gate = anyio.Event()
    disconnect = anyio.Event()
    async with running_gateway(cluster) as (app, _):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(asgi_call, app, CHAT, json.dumps(chat_body()).encode(), disconnect)
                while not replica.bodies:
                    await anyio.sleep(0)
                disconnect.set()
        outstanding = app.state.gateway.pool.replicas[0].outstanding
    assert replica.requests_cancelled == 1
    assert outstanding == 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_a_body_arriving_in_pieces_is_read_whole(stream: bool) -> None:
    """Real sockets deliver large bodies (images, videos) in many messages; the disconnect watcher
    must not take any of them, or the gateway sees truncated JSON."""
    cluster = FakeCluster("a")
    body = json.dumps(chat_body(content="x" * 5000, stream=stream)).encode()
    async with running_gateway(cluster) as (app, _):
        with anyio.fail_after(5):
            sent = await asgi_call(app, CHAT, body, anyio.Event(), chunk_size=512)
    assert sent[0]["status"] == 200, sent
    assert cluster["a"].bodies[0]["messages"] == chat_body(content="x" * 5000)["messages"]


def _media_body(**extra: object) -> dict:
    return chat_body([{"type": "text", "text": "what?"}, image_part(data_url(png_bytes()))], **extra)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_multimodal_cache_drift_500_is_repaired_by_one_retry(stream: bool) -> None:
    """vLLM 0.32 fails the next image request after a rejected one (cache drift); one resend fixes it."""
    cluster = FakeCluster("a")
    cluster["a"].error_events = 1
    async with running_gateway(cluster) as (_, client):
        response = await client.post(CHAT, json=_media_body(stream=stream))
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200
    if stream:
        assert "error" not in response.text and sse_events(response.content)[-1] == "[DONE]"
    else:
        assert response.json()["choices"][0]["message"]["content"] == "Hello!"
    assert len(cluster["a"].bodies) == 2
    assert "aim_gateway_upstream_repairs_total 1.0" in metrics


async def test_server_errors_are_retried_once_and_only_for_media() -> None:
    """The repair is bounded: text-only requests are never resent, and a persistent failure is resent once."""
    cluster = FakeCluster("a")
    replica = cluster["a"]
    async with running_gateway(cluster) as (_, client):
        replica.error_events = 1
        text_only = await client.post(CHAT, json=chat_body())
        replica.error_events = 9
        persistent = await client.post(CHAT, json=_media_body())
        persistent_stream = await client.post(CHAT, json=_media_body(stream=True))
    assert text_only.status_code == 502
    assert persistent.status_code == 502
    events = sse_events(persistent_stream.content)
    assert json.loads(events[-2])["error"]["code"] == 500 and events[-1] == "[DONE]"
    assert len(replica.bodies) == 1 + 2 + 2


async def test_until_disconnect_takes_back_its_own_cancellation_only() -> None:
    """The watcher cancels the request's task on a disconnect; the gateway then raises
    ClientDisconnectedError and leaves the task un-cancelled (a server shutdown's cancel stays)."""
    import asyncio

    from server.errors import ClientDisconnectedError
    from server.upstream import until_disconnect

    messages: asyncio.Queue[dict] = asyncio.Queue()
    never = asyncio.Event()
    task = asyncio.current_task()
    assert task is not None

    async def work() -> str:
        await never.wait()
        return "done"

    messages.put_nowait({"type": "http.request"})
    messages.put_nowait({"type": "http.disconnect"})
    with pytest.raises(ClientDisconnectedError):
        await until_disconnect(messages.get, work)
    assert task.cancelling() == 0

    async def quick() -> str:
        return "done"

    assert await until_disconnect(messages.get, quick) == "done"  # nothing arrives: no cancel
    assert task.cancelling() == 0
