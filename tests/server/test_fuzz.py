"""Property test: a thousand malformed requests never make the gateway answer 5xx, and it keeps serving."""

from __future__ import annotations

import json
from typing import Any

import anyio.from_thread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.fakes import FakeCluster, chat_body, data_url, image_part, png_bytes, running_gateway

CHAT = "/v1/chat/completions"
_PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
_FIELDS = [
    "model", "messages", "stream", "stream_options", "n", "max_tokens", "max_completion_tokens", "min_tokens",
    "temperature", "top_p", "top_k", "seed", "logprobs", "top_logprobs", "prompt_logprobs", "logit_bias",
    "truncate_prompt_tokens", "structured_outputs", "response_format", "stop", "tools", "tool_choice", "aim",
    "mm_processor_kwargs", "chat_template_kwargs", "continue_final_message", "add_generation_prompt",
]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | _PRINTABLE
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _base(stream: bool) -> dict[str, Any]:
    content = [{"type": "text", "text": "describe"}, image_part(data_url(png_bytes()))]
    return chat_body(content, stream=stream, max_tokens=8)


@st.composite
def mutated_requests(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    """A valid multimodal request with one field, message or content part replaced by junk."""
    body = _base(draw(st.booleans()))
    target = draw(st.sampled_from(["field", "message", "part", "url", "delete"]))
    junk = draw(json_values)
    if target == "field":
        body[draw(st.sampled_from(_FIELDS) | st.text(max_size=8))] = junk
    elif target == "message":
        body["messages"][0][draw(st.sampled_from(["role", "content", "name", "tool_calls"]))] = junk
    elif target == "part":
        body["messages"][0]["content"][draw(st.integers(0, 1))] = junk
    elif target == "url":
        body["messages"][0]["content"][1]["image_url"]["url"] = draw(
            st.sampled_from(["data:", "data:image/png;base64,", "file:///etc/passwd", "http://127.0.0.1/x"])
            | st.text(max_size=30).map(lambda t: "data:image/png;base64," + t)
        )
    else:
        del body[draw(st.sampled_from(["model", "messages"]))]
    headers = {"X-AIM-Level": draw(_PRINTABLE)} if draw(st.booleans()) else {}
    return "POST", CHAT, json.dumps(body).encode(), headers


raw_requests = st.tuples(
    st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH"]),
    st.sampled_from([CHAT, "/v1/models", "/v1/completions", "/health", "/ready", "/x"]),
    st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={"content-type": _PRINTABLE, "x-aim-level": _PRINTABLE}),
)


def test_malformed_requests_never_get_5xx() -> None:
    """Every bad input must get a 4xx in the OpenAI shape; one 5xx or crash is a bug (and a DoS lever)."""
    cluster = FakeCluster("a", "b")
    seen: list[int] = []
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(running_gateway(cluster, max_body_bytes=4096)) as (_, client),
    ):

        @settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
        @given(request=st.one_of(mutated_requests(), mutated_requests(), raw_requests))
        def check(request: tuple[str, str, bytes, dict[str, str]]) -> None:
            method, path, body, headers = request
            response = portal.call(lambda: client.request(method, path, content=body, headers=headers))
            seen.append(response.status_code)
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        check()
        valid = portal.call(lambda: client.post(CHAT, json=_base(stream=False)))
        health = portal.call(lambda: client.get("/health"))
    assert len(seen) >= 1000
    assert sum(400 <= status < 500 for status in seen) >= 800
    assert valid.status_code == 200
    assert health.status_code == 200
