"""The OpenAI Python SDK, unchanged, against the gateway (in-process transport, fake replicas)."""

from __future__ import annotations

import inspect
import json
from typing import Any

import httpx
import openai

from tests.server.fakes import ENGINE_AIM, FakeCluster, data_url, image_part, png_bytes, running_gateway

MESSAGES = [
    {
        "role": "user",
        "content": [{"type": "text", "text": "What is this?"}, image_part(data_url(png_bytes()))],
    }
]


def _sdk(app: object, api_key: str = "sk-test") -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=api_key, http_client=http, max_retries=0)


async def test_sdk_non_streaming_with_extra_body_knob() -> None:
    """`extra_body={"aim": ...}` is how SDK users set the knob; usage.aim must be readable from the SDK."""
    cluster = FakeCluster("a")
    async with running_gateway(cluster, api_keys=["sk-test"]) as (app, _):
        sdk = _sdk(app)
        completion = await sdk.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=8, extra_body={"aim": {"budget": 0.25}}
        )
        models = await sdk.models.list()
    assert completion.choices[0].message.content == "Hello!"
    assert completion.usage.model_extra["aim"] == {**ENGINE_AIM, "level": "budget:0.25"}
    assert [model.id for model in models.data] == ["tiny"]
    assert cluster["a"].bodies[0]["mm_processor_kwargs"] == {"aim_budget": 0.25}


async def test_sdk_streaming_with_usage_and_header_knob() -> None:
    """Streaming through the SDK yields every delta and the final usage chunk carrying usage.aim."""
    cluster = FakeCluster("a")
    async with running_gateway(cluster) as (app, _):
        stream = await _sdk(app).chat.completions.create(
            model="tiny", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
            extra_headers={"X-AIM-Level": "max"},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Hello!"
    assert chunks[-1].usage.model_extra["aim"]["level"] == "max"


async def test_sdk_sees_gateway_errors_as_typed_exceptions() -> None:
    """The OpenAI error shape lets the SDK raise its typed errors with the gateway's message."""
    cluster = FakeCluster("a")
    async with running_gateway(cluster, api_keys=["sk-test"]) as (app, _):
        try:
            await _sdk(app).chat.completions.create(
                model="tiny", messages=MESSAGES, extra_body={"aim": "turbo"}
            )
        except openai.BadRequestError as exc:
            bad = exc
        try:
            await _sdk(app, api_key="wrong").chat.completions.create(model="tiny", messages=MESSAGES)
        except openai.AuthenticationError as exc:
            denied = exc
    assert bad.body["param"] == "aim"
    assert "turbo" in bad.message
    assert denied.status_code == 401


def _every_sdk_argument() -> dict[str, Any]:
    """A value for each keyword of `chat.completions.create` (one request may carry all of them)."""
    anything = {"type": "object"}
    tool = {"type": "function", "function": {"name": "lookup", "parameters": anything}}
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "cat"}'}}
    messages = [
        {"role": "developer", "content": "Be brief.", "name": "dev"},
        {"role": "system", "content": [{"type": "text", "text": "You see images."}]},
        {"role": "user", "content": [{"type": "text", "text": "What?"}, image_part(data_url(png_bytes()))]},
        {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None, "audio": None},
        {"role": "tool", "content": "a cat", "tool_call_id": "call_1"},
    ]  # fmt: skip
    return {
        "messages": messages, "model": "tiny", "audio": {"voice": "alloy", "format": "wav"},
        "frequency_penalty": 0.5, "function_call": "auto",
        "functions": [{"name": "lookup", "parameters": {"type": "object"}}], "logit_bias": {"42": 1},
        "logprobs": True, "max_completion_tokens": 16, "max_tokens": 16, "metadata": {"team": "a"},
        "modalities": ["text"], "moderation": {"model": "omni-moderation-latest"}, "n": 1,
        "parallel_tool_calls": True, "prediction": {"type": "content", "content": "A cat."},
        "presence_penalty": 0.1, "prompt_cache_key": "k", "prompt_cache_options": {"mode": "implicit"},
        "prompt_cache_retention": "24h", "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": anything}},
        "safety_identifier": "s", "seed": 7, "service_tier": "auto", "stop": ["\n"], "store": False,
        "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.5, "tool_choice": "auto",
        "tools": [tool], "top_logprobs": 2, "top_p": 0.9, "user": "u", "verbosity": "low",
        "web_search_options": {"search_context_size": "low"},
    }  # fmt: skip


async def _sdk_request_body(arguments: dict[str, Any]) -> bytes:
    """The body the SDK sends for `create(**arguments)`, captured before it leaves."""
    sent: list[bytes] = []

    def capture(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(200, content=b"data: [DONE]\n\n", headers={"content-type": "text/event-stream"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(capture))
    sdk = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="sk", http_client=http, max_retries=0)
    async for _ in await sdk.chat.completions.create(**arguments):
        pass
    return sent[0]


async def test_every_field_the_sdk_sends_is_accepted_and_forwarded() -> None:
    """A client may set any chat-completions argument the OpenAI SDK has; the gateway must take the
    body as the SDK writes it and forward every field but its own. A new SDK argument fails here
    until it is added above (and accepted)."""
    create = inspect.signature(openai.resources.chat.AsyncCompletions.create).parameters
    arguments = _every_sdk_argument()
    assert set(create) - {"self", "extra_headers", "extra_query", "extra_body", "timeout"} == set(arguments)
    body = await _sdk_request_body(arguments)
    cluster = FakeCluster("a")
    async with running_gateway(cluster) as (_, client):
        response = await client.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 200, response.text
    forwarded = cluster["a"].bodies[0]
    assert set(json.loads(body)) <= set(forwarded)
    assert forwarded["messages"][3]["tool_calls"][0]["function"]["name"] == "lookup"
