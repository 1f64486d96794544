"""The OpenAI Python SDK, unchanged, against the gateway (in-process transport, fake replicas)."""

from __future__ import annotations

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
