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
"""

from __future__ import annotations

from aim_vllm.core.level import EXPECTED, MAX_TEXT_CHARS, OFF, AimLevel, LevelError, parse_json, parse_text
from server.errors import InvalidRequestError

__all__ = ["HEADER", "OFF", "AimLevel", "parse_body_knob", "parse_level", "resolve_knob"]

HEADER = "X-AIM-Level"


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
