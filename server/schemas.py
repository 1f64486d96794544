"""The subset of the OpenAI chat-completions request the gateway reads and validates.

Unknown fields pass through untouched (`extra="allow"`; the gateway forwards the client's parsed
body, not this model's dump). These models are also the request schema of `/openapi.json`
(`server/openapi.py`): what the gateway validates with is what it documents.

The rules here shield stock vLLM (0.32) from input it answers with a 500 or that leaves its
multimodal cache poisoned (docs: shared/docs/vllm-hostile-input.md): `n` must be 1,
`min_tokens <= max_tokens`, `temperature` in [0, 2], `top_logprobs` 0..20 and only with
`logprobs`, `logit_bias` keys are token ids with biases in [-100, 100],
`truncate_prompt_tokens >= 1` and never with media, `structured_outputs` is an object, roles are
system/user/assistant/tool/developer and media appear only in user messages. Types are strict
(no "10" for 10). What needs the model (token ids against the vocabulary, grammar syntax) is left
to vLLM; the cache drift such a rejection causes is repaired by one resend (`upstream.py`).

Fields the gateway never forwards: `ENGINE_OVERRIDES` (engine-internal knobs a client must not
set; the gateway writes `mm_processor_kwargs` itself from the validated AIM knob) and its own
`GATEWAY_FIELDS` (`aim`, the knob; `aim_frames_as_video`, `frames.py`'s per-request switch).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from server.errors import InvalidRequestError, invalid_from_validation
from server.knob import AIM_SCHEMA

# Engine-internal request fields dropped before forwarding (security relevant: processor and
# media-loader arguments, vLLM extra args, server-side chat templates, KV-transfer parameters).
ENGINE_OVERRIDES = frozenset(
    {"mm_processor_kwargs", "media_io_kwargs", "vllm_xargs", "chat_template", "kv_transfer_params"}
)
GATEWAY_FIELDS = frozenset({"aim", "aim_frames_as_video"})
MEDIA_PART_TYPES = ("image_url", "video_url")
# The `max_logprobs` default of vLLM's server; more is refused upstream.
MAX_LOGPROBS = 20
_INT64 = 2**63
_MAX_LOGIT_BIAS_ENTRIES = 1024

Role = Literal["system", "user", "assistant", "tool", "developer"]
_PART_TYPES_BY_ROLE: dict[str, tuple[str, ...]] = {
    "user": ("text", *MEDIA_PART_TYPES),
    "assistant": ("text", "refusal"),
    "system": ("text",),
    "developer": ("text",),
    "tool": ("text",),
}
PositiveInt = Annotated[int, Field(ge=1)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# `aim` is checked by the level grammar (`knob.resolve_knob`), which words its own errors.
AimField = Annotated[Any, WithJsonSchema(AIM_SCHEMA)]
LogitBias = Annotated[
    dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]], Field(max_length=_MAX_LOGIT_BIAS_ENTRIES)
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class MediaURL(_Open):
    url: Annotated[str, Field(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(_Open):
    """One content part; the field named by `type` must be present."""

    type: Literal["text", "refusal", "image_url", "video_url"]
    text: str | None = None
    refusal: str | None = None
    image_url: MediaURL | None = None
    video_url: MediaURL | None = None

    @model_validator(mode="after")
    def _payload_present(self) -> ContentPart:
        if getattr(self, self.type) is None:
            raise ValueError(f"a {self.type!r} part needs a {self.type!r} field")
        return self


class ToolCallFunction(_Open):
    name: Annotated[str, Field(min_length=1)]
    arguments: str

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            raise ValueError("arguments must be a JSON object encoded as a string") from None
        if not isinstance(parsed, dict):
            raise ValueError("arguments must be a JSON object encoded as a string")
        return value


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(_Open):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None

    @model_validator(mode="after")
    def _content_fits_role(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        allowed = _PART_TYPES_BY_ROLE[self.role]
        for part in self.content if isinstance(self.content, list) else ():
            if part.type not in allowed:
                where = "only in user messages" if part.type in MEDIA_PART_TYPES else f"not in {self.role}"
                raise ValueError(f"content parts of type {part.type!r} are allowed {where}")
        return self

    @property
    def media_parts(self) -> list[ContentPart]:
        parts = self.content if isinstance(self.content, list) else []
        return [part for part in parts if part.type in MEDIA_PART_TYPES]


class StreamOptions(_Open):
    include_usage: bool | None = Field(
        default=None, description="Send a final chunk with `usage` (and `usage.aim`) before [DONE]"
    )
    continuous_usage_stats: bool | None = None


class StructuredOutputs(_Open):
    """vLLM's `structured_outputs` object; only the types of the common keys are checked."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs a json_schema object")
        return self


_EXAMPLE = {
    "model": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "text", "text": "What is in this image?"},
            ],
        }
    ],
    "aim": "balanced",
    "max_tokens": 64,
}


class ChatCompletionRequest(_Open):
    """What the gateway checks in a chat-completions body (everything else passes through)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})

    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    aim: AimField = None  # gateway-only, never forwarded
    stream: bool | None = Field(
        default=None, description="Answer as server-sent events (`data: <chunk>` lines, then `data: [DONE]`)"
    )
    stream_options: StreamOptions | None = Field(default=None, description="Only with `stream: true`")
    n: Literal[1] | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    seed: Annotated[int, Field(ge=-_INT64, lt=_INT64)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    prompt_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    logit_bias: LogitBias | None = None
    truncate_prompt_tokens: PositiveInt | None = None
    structured_outputs: StructuredOutputs | None = None
    response_format: ResponseFormat | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    chat_template_kwargs: dict[str, str | int | float | bool | None] | None = None
    aim_frames_as_video: bool | None = None  # gateway-only (frames.py), never forwarded

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not (key.isascii() and key.isdigit() and len(key) <= 9):
                raise ValueError(
                    f"logit_bias keys must be token ids (non-negative integers), got {key[:20]!r}"
                )
        return value

    @property
    def media_count(self) -> int:
        return sum(len(message.media_parts) for message in self.messages)


def _check_sampling(request: ChatCompletionRequest) -> None:
    max_tokens = request.max_completion_tokens or request.max_tokens
    if request.min_tokens is not None and max_tokens is not None and request.min_tokens > max_tokens:
        raise InvalidRequestError(
            f"min_tokens ({request.min_tokens}) must not exceed max_tokens ({max_tokens})", param="min_tokens"
        )
    if request.top_logprobs and not request.logprobs:
        raise InvalidRequestError("top_logprobs needs logprobs set to true", param="top_logprobs")
    if request.tool_choice not in (None, "none", "auto") and not request.tools:
        raise InvalidRequestError(
            "tool_choice 'required' or a named tool needs a non-empty tools list", param="tool_choice"
        )


def _check_streaming(request: ChatCompletionRequest) -> None:
    if request.stream_options is not None and not request.stream:
        raise InvalidRequestError(
            "stream_options is only allowed with stream set to true", param="stream_options"
        )
    if request.prompt_logprobs and request.stream:
        raise InvalidRequestError(
            "prompt_logprobs are not available with stream set to true", param="prompt_logprobs"
        )


def _check_media_and_template(request: ChatCompletionRequest) -> None:
    if request.truncate_prompt_tokens is not None and request.media_count:
        raise InvalidRequestError(
            "truncate_prompt_tokens cannot be used with image or video inputs", param="truncate_prompt_tokens"
        )
    if request.continue_final_message and request.add_generation_prompt:
        raise InvalidRequestError(
            "continue_final_message and add_generation_prompt cannot both be true",
            param="continue_final_message",
        )
    if request.continue_final_message and request.messages[-1].role != "assistant":
        raise InvalidRequestError(
            "continue_final_message needs the last message to be from the assistant",
            param="continue_final_message",
        )
    if request.chat_template_kwargs and "chat_template" in request.chat_template_kwargs:
        raise InvalidRequestError(
            "chat_template_kwargs may not set chat_template", param="chat_template_kwargs"
        )


def validate_chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    """Validate a parsed body; InvalidRequestError (400, with `param`) on the first problem."""
    checked = {key: value for key, value in body.items() if key not in ENGINE_OVERRIDES}
    try:
        request = ChatCompletionRequest.model_validate(checked)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None
    for check in (_check_sampling, _check_streaming, _check_media_and_template):
        check(request)
    return request
