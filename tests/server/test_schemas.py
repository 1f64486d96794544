"""Request validation: parameters stock vLLM answers with a 500 (or that poison its cache) are 400 here."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.body import parse_json_object
from server.errors import InvalidRequestError
from server.schemas import validate_chat_request

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
BASE = {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, IMAGE]}]}


def _with(**changes: object) -> dict:
    body = copy.deepcopy(BASE)
    body.update(changes)
    return body


def _messages(*messages: dict) -> dict:
    return _with(messages=list(messages))


# (case id, body, expected param)
BAD = [
    ("n=2", _with(n=2), "n"),
    ("min>max", _with(min_tokens=5, max_tokens=2), "min_tokens"),
    ("min>max_completion", _with(min_tokens=5, max_completion_tokens=2), "min_tokens"),
    ("top_logprobs without logprobs", _with(top_logprobs=3), "top_logprobs"),
    ("top_logprobs>20", _with(top_logprobs=21, logprobs=True), "top_logprobs"),
    ("top_logprobs<0", _with(top_logprobs=-1, logprobs=True), "top_logprobs"),
    ("logit_bias word key", _with(logit_bias={"hello": 1}), "logit_bias"),
    ("logit_bias negative key", _with(logit_bias={"-5": 1}), "logit_bias"),
    ("logit_bias out of range", _with(logit_bias={"5": 101}), "logit_bias"),
    ("truncate 0", _with(truncate_prompt_tokens=0), "truncate_prompt_tokens"),
    ("truncate with media", _with(truncate_prompt_tokens=5), "truncate_prompt_tokens"),
    ("structured_outputs string", _with(structured_outputs="json"), "structured_outputs"),
    ("structured_outputs list", _with(structured_outputs=[1]), "structured_outputs"),
    ("regex not a string", _with(structured_outputs={"regex": 5}), "structured_outputs.regex"),
    ("stream_options without stream", _with(stream_options={"include_usage": True}), "stream_options"),
    ("prompt_logprobs while streaming", _with(stream=True, prompt_logprobs=2), "prompt_logprobs"),
    ("max_tokens as text", _with(max_tokens="10"), "max_tokens"),
    ("max_tokens 0", _with(max_tokens=0), "max_tokens"),
    ("stream as text", _with(stream="yes"), "stream"),
    ("temperature negative", _with(temperature=-1), "temperature"),
    ("top_p 0", _with(top_p=0), "top_p"),
    ("seed too big", _with(seed=2**64), "seed"),
    ("no messages", _with(messages=[]), "messages"),
    ("no model", {"messages": BASE["messages"]}, "model"),
    ("unknown role", _messages({"role": "bot", "content": "x"}), "messages[0].role"),
    ("developer with image", _messages({"role": "developer", "content": [IMAGE]}), "messages[0]"),
    ("system with image", _messages({"role": "system", "content": [IMAGE]}), "messages[0]"),
    ("assistant with image", _messages({"role": "assistant", "content": [IMAGE]}), "messages[0]"),
    (
        "audio part",
        _messages({"role": "user", "content": [{"type": "input_audio"}]}),
        "messages[0].content[0].type",
    ),
    (
        "image part without url",
        _messages({"role": "user", "content": [{"type": "image_url"}]}),
        "messages[0].content[0]",
    ),
    (
        "image url not a string",
        _messages({"role": "user", "content": [{"type": "image_url", "image_url": {"url": 3}}]}),
        "messages[0].content[0].image_url.url",
    ),
    ("content a number", _messages({"role": "user", "content": 5}), "messages[0].content"),
    ("user without content", _messages({"role": "user"}), "messages[0]"),
    ("tool_calls on user", _messages({"role": "user", "content": "x", "tool_calls": []}), "messages[0]"),
    (
        "tool arguments not JSON",
        _messages(
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                ],
            }
        ),
        "messages[0].tool_calls[0].function.arguments",
    ),
    ("tool_choice required without tools", _with(tool_choice="required"), "tool_choice"),
    (
        "continue and generation prompt",
        _with(continue_final_message=True, add_generation_prompt=True),
        "continue_final_message",
    ),
    (
        "chat_template via kwargs",
        _with(chat_template_kwargs={"chat_template": "{{ 7*7 }}"}),
        "chat_template_kwargs",
    ),
    ("chat_template_kwargs nested", _with(chat_template_kwargs={"a": {"b": 1}}), "chat_template_kwargs.a"),
    ("response_format unknown", _with(response_format={"type": "yaml"}), "response_format.type"),
    ("json_schema missing", _with(response_format={"type": "json_schema"}), "response_format"),
]


@pytest.mark.parametrize(("body", "param"), [(b, p) for _, b, p in BAD], ids=[c for c, _, _ in BAD])
def test_hostile_parameters_are_400_with_param(body: dict, param: str) -> None:
    """Each gets a 500 or a poisoned multimodal cache in stock vLLM 0.32; the gateway says 400 first."""
    with pytest.raises(InvalidRequestError) as info:
        validate_chat_request(body)
    assert info.value.status_code == 400
    assert info.value.param == param


GOOD = [
    ("plain", _with()),
    ("string content", _messages({"role": "user", "content": "hello"})),
    ("sampling", _with(temperature=0, top_p=1, top_k=-1, min_p=0.1, seed=-3, max_tokens=5, min_tokens=5)),
    ("logprobs", _with(logprobs=True, top_logprobs=20, logit_bias={"42": -100, "7": 2.5})),
    ("truncate text only", _messages({"role": "user", "content": "x"}) | {"truncate_prompt_tokens": 8}),
    ("stream with usage", _with(stream=True, stream_options={"include_usage": True})),
    ("structured", _with(structured_outputs={"choice": ["a", "b"]}, response_format={"type": "json_object"})),
    ("tools", _with(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="required")),
    (
        "tool turn",
        _messages(
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ),
    ),
    (
        "every role",
        _messages(
            {"role": "system", "content": "s"},
            {"role": "developer", "content": [{"type": "text", "text": "d"}]},
            {
                "role": "user",
                "content": [IMAGE, {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AA"}}],
            },
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        ),
    ),
    ("unknown fields", _with(ignore_eos=True, some_future_field={"x": [1]})),
    (
        "continue final",
        _messages({"role": "user", "content": "x"}, {"role": "assistant", "content": "Sure"})
        | {"continue_final_message": True, "add_generation_prompt": False},
    ),
]


@pytest.mark.parametrize("body", [b for _, b in GOOD], ids=[c for c, _ in GOOD])
def test_valid_requests_pass(body: dict) -> None:
    """Validation must not refuse what the OpenAI SDK and vLLM's extensions legitimately send."""
    validate_chat_request(body)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\xff\xfe{}", "UTF-8"),
        (b"{", "not valid JSON"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"[" * 100_000, "nested deeper"),
        (b'{"a": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}", "nested deeper"),
        (b'{"a": "\\ud800"}', "not valid Unicode"),
        (b'{"\\udfff": 1}', "not valid Unicode"),
    ],
)
def test_body_parsing_refuses_malformed_json(data: bytes, needle: str) -> None:
    """Invalid UTF-8, NaN, lone surrogates and deep nesting must be a 400, not a crash deeper in the stack."""
    with pytest.raises(InvalidRequestError) as info:
        parse_json_object(data, max_depth=32)
    assert needle in info.value.message


_json_trees = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _json_trees, max_size=4), st.booleans())
def test_fast_decoding_accepts_and_returns_what_the_stdlib_does(body: dict, ascii_only: bool) -> None:
    """msgspec decodes the bodies; what it refuses (floats past range, ...) falls back to `json`:
    either way the gateway sees exactly the object the standard library would give it."""
    data = json.dumps(body, ensure_ascii=ascii_only).encode()
    assert parse_json_object(data, max_depth=32) == json.loads(data)


def test_numbers_msgspec_refuses_are_still_accepted_as_before() -> None:
    """1e400 is valid JSON (stdlib: inf); msgspec refuses it, the stdlib fallback keeps accepting it."""
    assert parse_json_object(b'{"a": 1e400, "b": 1}', max_depth=32) == {"a": float("inf"), "b": 1}
