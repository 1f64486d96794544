"""The AIM efficiency knob of one request: parsed, validated, and mapped onto vLLM's request body.

Where the knob comes from (first present wins):
  1. the body field `aim` (OpenAI SDK: `extra_body={"aim": ...}`), either a string in the
     grammar below or one object of
       {"preset": "off" | "light" | "balanced" | "max"}
       {"merge_ratio": r, "prune_layers": [l1, l2]}   (either key may be left out, not both)
         plus, for baselines at the same token counts: "merge_method": "pool" | "random",
         "prune_method": "fastv", "prune_keep": k (prune once at l1 to this fraction)
       {"budget": b}
  2. the `X-AIM-Level` header, a string in the grammar below;
  3. the server default (`Settings.default_aim`, itself in the grammar; `off` unless set).

Level grammar (case-insensitive, surrounding blanks ignored; numbers are plain decimals):
    level    := preset | budget | explicit
    preset   := "off" | "light" | "balanced" | "max"
    budget   := "budget:" number                     0 < number <= 1 (fraction of AIM-off FLOPs)
    explicit := item ("," item)*                     each key at most once
    item     := "merge:" number                      kept fraction of each frame, 0 < number <= 1
              | "prune:" int "-" int                 pruning layers l1-l2, 0 <= l1 < l2
              | "method:" ("aim" | "pool" | "random")     token reduction before the LLM
              | "importance:" ("pagerank" | "fastv")      ranking inside the LLM
              | "keep:" number                       single-layer pruning at l1 to this fraction
  e.g. `balanced`, `budget:0.2`, `merge:0.25,prune:14-22`, `prune:14-22` (no merging),
  `merge:0.25,method:pool` (uniform pooling baseline), `prune:2-3,keep:0.3,importance:fastv`.

What the engine receives (request body `mm_processor_kwargs`; exactly one form, always sent):
    preset   -> {"aim_preset": name}
    budget   -> {"aim_budget": b}
    explicit -> {"aim_merge_ratio": r} plus {"aim_prune_l1": l1, "aim_prune_l2": l2} when pruning,
                plus "aim_merge_method" / "aim_prune_method" / "aim_prune_keep" when not default
The engine resolves presets and budgets against the model's real depth and token counts and
answers 400 for values that do not fit the model. `level` is the normalised grammar string the
gateway adds to `usage.aim`; `label` is its bounded form for metric labels.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aim_vllm.core.schedule import PRESETS
from server.errors import InvalidRequestError, invalid_from_validation

HEADER = "X-AIM-Level"
# Sanity bound on pruning layers (the engine checks the model's real depth).
_MAX_LAYER = 1024
_MAX_LEVEL_CHARS = 64
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")
_LAYERS = re.compile(r"([0-9]{1,4})-([0-9]{1,4})")

Fraction = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
Layer = Annotated[int, Field(ge=0, le=_MAX_LAYER)]


class _Knob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PresetKnob(_Knob):
    """A named level; the engine maps it onto the model's depth (`core.schedule.preset_schedule`)."""

    preset: str

    @field_validator("preset")
    @classmethod
    def _known(cls, value: str) -> str:
        name = value.strip().lower()
        if name not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; expected one of {', '.join(PRESETS)}")
        return name

    def mm_processor_kwargs(self) -> dict[str, Any]:
        return {"aim_preset": self.preset}

    @property
    def level(self) -> str:
        return self.preset

    @property
    def label(self) -> str:
        return self.preset


class ExplicitKnob(_Knob):
    """Explicit parameters: merge ratio (kept fraction) and/or pruning layers (l1, l2), and the
    baselines' methods (`core.schedule.MERGE_METHODS` / `PRUNE_METHODS`, single-layer keep)."""

    merge_ratio: Fraction = 1.0
    prune_layers: Annotated[list[Layer], Field(min_length=2, max_length=2)] | None = None
    merge_method: Literal["aim", "pool", "random"] = "aim"
    prune_method: Literal["pagerank", "fastv"] = "pagerank"
    prune_keep: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ExplicitKnob:
        if not self.model_fields_set & {"merge_ratio", "prune_layers"}:
            raise ValueError("give merge_ratio, prune_layers, or both")
        if self.prune_layers is not None and not self.prune_layers[0] < self.prune_layers[1]:
            raise ValueError(f"prune_layers must be [l1, l2] with l1 < l2, got {self.prune_layers}")
        if self.prune_keep is not None and self.prune_layers is None:
            raise ValueError("prune_keep needs prune_layers")
        return self

    def mm_processor_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"aim_merge_ratio": self.merge_ratio}
        if self.merge_method != "aim":
            kwargs["aim_merge_method"] = self.merge_method
        if self.prune_layers is not None:
            kwargs["aim_prune_l1"], kwargs["aim_prune_l2"] = self.prune_layers
            if self.prune_method != "pagerank":
                kwargs["aim_prune_method"] = self.prune_method
            if self.prune_keep is not None:
                kwargs["aim_prune_keep"] = self.prune_keep
        return kwargs

    @property
    def level(self) -> str:
        text = f"merge:{_format_number(self.merge_ratio)}"
        if self.prune_layers is not None:
            text += f",prune:{self.prune_layers[0]}-{self.prune_layers[1]}"
        if self.merge_method != "aim":
            text += f",method:{self.merge_method}"
        if self.prune_method != "pagerank":
            text += f",importance:{self.prune_method}"
        if self.prune_keep is not None:
            text += f",keep:{_format_number(self.prune_keep)}"
        return text

    @property
    def label(self) -> str:
        return "custom"


class BudgetKnob(_Knob):
    """A FLOPs budget: the fraction of the AIM-off LLM prefill FLOPs the request may spend."""

    budget: Fraction

    def mm_processor_kwargs(self) -> dict[str, Any]:
        return {"aim_budget": self.budget}

    @property
    def level(self) -> str:
        return f"budget:{_format_number(self.budget)}"

    @property
    def label(self) -> str:
        return "budget"


AimKnob = PresetKnob | ExplicitKnob | BudgetKnob
OFF = PresetKnob(preset="off")


def parse_level(text: str, param: str = HEADER) -> AimKnob:
    """Parse a string in the level grammar; InvalidRequestError (400, `param`) when it is not."""
    value = text.strip().lower()
    if not value or len(value) > _MAX_LEVEL_CHARS:
        raise InvalidRequestError(f"{param} must be 1-{_MAX_LEVEL_CHARS} characters", param=param)
    try:
        if value in PRESETS:
            return PresetKnob(preset=value)
        if value.startswith("budget:"):
            return BudgetKnob(budget=_parse_number(value.removeprefix("budget:")))
        return ExplicitKnob(**_parse_explicit(value))
    except ValidationError as exc:
        reason = invalid_from_validation(exc).message
    except ValueError as exc:
        reason = str(exc)
    raise InvalidRequestError(
        f"invalid AIM level {text.strip()[:_MAX_LEVEL_CHARS]!r} in {param}: {reason}; expected "
        "a preset (off, light, balanced, max), 'budget:<0-1>' or 'merge:<0-1>,prune:<l1>-<l2>'",
        param=param,
    )


def parse_body_knob(value: object) -> AimKnob | None:
    """The knob of the body field `aim` (None when absent or null)."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_level(value, param="aim")
    if not isinstance(value, dict):
        raise InvalidRequestError("aim must be a string or an object", param="aim")
    model: type[AimKnob] = ExplicitKnob
    if "preset" in value:
        model = PresetKnob
    elif "budget" in value:
        model = BudgetKnob
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise invalid_from_validation(exc, root="aim") from None


def resolve_knob(body_value: object, header_value: str | None, default: AimKnob) -> AimKnob:
    """Body wins over header; the server default applies when neither is given."""
    knob = parse_body_knob(body_value)
    if knob is not None:
        return knob
    if header_value is not None:
        return parse_level(header_value)
    return default


_ITEMS = {
    "merge": "merge_ratio",
    "prune": "prune_layers",
    "method": "merge_method",
    "importance": "prune_method",
    "keep": "prune_keep",
}


def _parse_explicit(value: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for item in value.split(","):
        key, sep, arg = item.strip().partition(":")
        name = _ITEMS.get(key)
        if not sep or name is None:
            raise ValueError(f"unknown item {item.strip()!r}")
        if name in fields:
            raise ValueError(f"{key!r} given twice")
        if name in ("merge_ratio", "prune_keep"):
            fields[name] = _parse_number(arg)
        elif name == "prune_layers":
            fields[name] = _parse_layers(arg)
        else:
            fields[name] = arg.strip()
    return fields


def _parse_number(text: str) -> float:
    if not _NUMBER.fullmatch(text.strip()):
        raise ValueError(f"{text.strip()!r} is not a plain decimal number")
    return float(text)


def _parse_layers(text: str) -> list[int]:
    match = _LAYERS.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"pruning layers must be '<l1>-<l2>', got {text.strip()!r}")
    return [int(match[1]), int(match[2])]


def _format_number(value: float) -> str:
    """Shortest exact decimal text of a number: 0.25 -> '0.25', 1.0 -> '1', 1e-05 -> '0.00001'."""
    return format(Decimal(repr(float(value))), "f").removesuffix(".0")
