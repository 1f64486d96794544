"""The AIM knob of one request at the gateway: where it comes from, and its errors as HTTP 400s.

Where the knob comes from (first present wins):
  1. the body field `aim` (OpenAI SDK: `extra_body={"aim": ...}`), a level in the text form or
     an object in the JSON form;
  2. the `X-AIM-Level` header, a level in the text form;
  3. the server default (`Settings.default_aim`, in the text form; `off` unless set).
The grammar, its forms, checks and the engine's `mm_processor_kwargs` are `aim_vllm.core.level`'s
(one source for the gateway, `aim-vllm engine --aim-default`, eval and bench). The gateway
always sends exactly one engine form (`AimLevel.engine_kwargs`), so the engine never falls back
to its own default for a request the gateway resolved; `AimLevel.text` goes into `usage.aim.level`
and `AimLevel.label` into metric labels.

`AIM_TEXT_SCHEMA` and `AIM_SCHEMA` describe the two forms for the OpenAPI schema (the header and
the body field); their names, ranges and choices come from the grammar's own constants, and the
grammar, not the schema, decides what is accepted.
"""

from __future__ import annotations

from typing import Any

from aim_vllm.core.level import (
    AUTO,
    EXPECTED,
    MAX_LAYER,
    MAX_TEXT_CHARS,
    OFF,
    AimLevel,
    LevelError,
    parse_json,
    parse_text,
)
from aim_vllm.core.schedule import MERGE_METHODS, PRESETS, PRUNE_METHODS
from server.errors import InvalidRequestError

__all__ = [
    "AIM_SCHEMA", "AIM_TEXT_SCHEMA", "HEADER", "OFF",
    "AimLevel", "parse_body_knob", "parse_level", "resolve_knob",
]  # fmt: skip

HEADER = "X-AIM-Level"

_FRACTION = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
_LAYER = {"type": "integer", "minimum": 0, "maximum": MAX_LAYER}
AIM_TEXT_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_TEXT_CHARS,
    "title": "AIM level, text form",
    "description": f"Case-insensitive: {EXPECTED}; a preset or budget may end in ',encoder:<0-1>', "
    "a budget in ',encoder:auto'; explicit items: merge, prune, method, importance, keep, encoder.",
    "examples": ["balanced", "budget:0.2", "merge:0.25,prune:14-22", "balanced,encoder:0.5"],
}


def _object(title: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "title": title, "properties": properties, "additionalProperties": False}
    return schema | ({"required": required} if required else {"minProperties": 1})


AIM_SCHEMA: dict[str, Any] = {
    "title": "AIM level",
    "description": "The AIM level of this request, in the text form or the JSON form; wins over the "
    f"{HEADER} header and the server default. The gateway's own field: never forwarded.",
    "anyOf": [
        AIM_TEXT_SCHEMA,
        _object("AIM preset", {"preset": {"enum": list(PRESETS)}, "encoder_keep": _FRACTION}, ["preset"]),
        _object(
            "AIM FLOPs budget (fraction of AIM-off LLM prefill FLOPs)",
            {"budget": _FRACTION, "encoder_keep": {"anyOf": [_FRACTION, {"const": AUTO}]}},
            ["budget"],
        ),
        _object(
            "AIM explicit schedule (merge_ratio, prune_layers or encoder_keep needed)",
            {
                "merge_ratio": _FRACTION,
                "prune_layers": {"type": "array", "items": _LAYER, "minItems": 2, "maxItems": 2},
                "merge_method": {"enum": list(MERGE_METHODS)},
                "prune_method": {"enum": list(PRUNE_METHODS)},
                "prune_keep": {"type": "number", "minimum": 0, "maximum": 1},
                "encoder_keep": _FRACTION,
            },
            [],
        ),
        {"type": "null"},
    ],
}


def parse_level(text: str, param: str = HEADER) -> AimLevel:
    """A level in the text form; InvalidRequestError (400 on `param`) when it is not one."""
    try:
        return parse_text(text)
    except LevelError as exc:
        shown = text.strip()[:MAX_TEXT_CHARS] if isinstance(text, str) else text
        raise InvalidRequestError(
            f"invalid AIM level {shown!r} in {param}: {exc}; expected {EXPECTED}", param=param
        ) from None


def parse_body_knob(value: object) -> AimLevel | None:
    """The level of the body field `aim` (None when absent or null); 400 naming the part at fault."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_level(value, param="aim")
    try:
        return parse_json(value)
    except LevelError as exc:
        param = f"aim.{exc.field}" if exc.field else "aim"
        raise InvalidRequestError(f"invalid aim: {exc}", param=param) from None


def resolve_knob(body_value: object, header_value: str | None, default: AimLevel) -> AimLevel:
    """Body wins over header; the server default applies when neither is given."""
    knob = parse_body_knob(body_value)
    if knob is not None:
        return knob
    if header_value is not None:
        return parse_level(header_value)
    return default
