"""The AIM level of a request: one grammar, its three forms, their checks and error messages.

A level is a preset, a FLOPs budget, or an explicit schedule (`AimLevel`). Presets and budgets
are resolved against a model (its depth, the request's token counts) by the engine; an explicit
level is its schedule (`core.schedule.AimSchedule`, which checks its own ranges).

Text form (`X-AIM-Level`, the body field `aim` as a string, `--aim-default`, `--default-aim`,
the `--levels` of `aim-vllm eval` and `bench`); case-insensitive, blanks around items ignored:
    level    := preset [",encoder:" number] | budget [",encoder:" (number | "auto")] | explicit
    preset   := "off" | "light" | "balanced" | "max"
    budget   := "budget:" number                   0 < number <= 1 (fraction of AIM-off LLM FLOPs)
    explicit := item ("," item)*                   each key at most once; merge, prune or encoder needed
    item     := "merge:" number                    kept fraction of each frame, 0 < number <= 1
              | "prune:" int "-" int               pruning layers l1-l2, 0 <= l1 < l2
              | "method:" ("aim" | "pool" | "random" | "evs")   token reduction before the LLM
              | "importance:" ("pagerank" | "fastv")      ranking inside the LLM
              | "keep:" number                     single-layer pruning at l1 to this fraction
              | "encoder:" number                  kept fraction inside the vision encoder, 0 < number <= 1
    number   := plain decimal digits ("0.25", ".5", "1"; no signs or exponents)
  e.g. `balanced`, `budget:0.2`, `merge:0.25,prune:14-22`, `merge:0.25,method:pool`,
  `merge:0.25,prune:14-22,encoder:0.5`, `balanced,encoder:0.5` (`core.encoder_merge`; the
  project's extension: a preset or budget resolves as without it, then the encoder merges);
  `budget:0.3,encoder:auto`: the budget is a fraction of the whole prefill's FLOPs (vision encoder
  + LLM) and the solver picks the encoder keep too (`core.budget.solve_prefill_budget`).
JSON form (the body field `aim` as an object; the same levels):
    {"preset": name [, "encoder_keep": e]} | {"budget": b [, "encoder_keep": e | "auto"]}
  | {"merge_ratio": r, "prune_layers": [l1, l2], "merge_method": m, "prune_method": p, "prune_keep": k,
     "encoder_keep": e}   (explicit: merge_ratio, prune_layers or encoder_keep needed, the others optional)
Engine form (vLLM `mm_processor_kwargs`, what the gateway sends and the processor reads):
    {"aim_preset": name [, "aim_encoder_keep": e]} | {"aim_budget": b [, "aim_encoder_keep": e | "auto"]}
  | {"aim_merge_ratio": r, "aim_prune_l1": l1, "aim_prune_l2": l2, "aim_merge_method": m,
     "aim_prune_method": p, "aim_prune_keep": k, "aim_encoder_keep": e}
    (l2 may be left out with a keep fraction: l1 + 1)
`AimLevel.text` and `AimLevel.engine_kwargs` write the canonical forms, which parse back to the
same level; `schedule_kwargs` is the canonical engine form of a resolved schedule (empty when
AIM is off, so vLLM then sees a stock request). Every error is a `LevelError` naming the value.
Plain Python (the gateway imports it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from aim_vllm.core.schedule import MERGE_METHODS, PRESETS, PRUNE_METHODS, AimSchedule, preset_schedule

PRESET, BUDGET = "aim_preset", "aim_budget"
MERGE_RATIO, PRUNE_L1, PRUNE_L2 = "aim_merge_ratio", "aim_prune_l1", "aim_prune_l2"
MERGE_METHOD, PRUNE_METHOD, PRUNE_KEEP = "aim_merge_method", "aim_prune_method", "aim_prune_keep"
ENCODER_KEEP = "aim_encoder_keep"
AUTO = "auto"  # encoder_keep of a budget over the whole prefill: the solver picks it
EXPLICIT_KEYS = (MERGE_RATIO, PRUNE_L1, PRUNE_L2, MERGE_METHOD, PRUNE_METHOD, PRUNE_KEEP, ENCODER_KEEP)
ENGINE_KEYS = (PRESET, BUDGET, *EXPLICIT_KEYS)
# Written by the engine's processor next to a budget level's resolved schedule, never by clients:
# the budget it was solved for, "llm:<b>" or "prefill:<b>" (`budget_of`), so `usage.aim` can say
# whether the prefill stayed within it.
BUDGET_OF = "aim_budget_of"

MAX_TEXT_CHARS = 64
MAX_LAYER = 1024  # sanity bound; the engine checks the model's real depth
EXPECTED = "a preset (off, light, balanced, max), 'budget:<0-1>' or 'merge:<0-1>,prune:<l1>-<l2>'"
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")
_LAYERS = re.compile(r"([0-9]{1,4})-([0-9]{1,4})")
# text item / JSON key -> AimSchedule field
_TEXT_ITEMS = {
    "merge": "merge_ratio",
    "prune": "prune_layers",
    "method": "merge_method",
    "importance": "prune_method",
    "keep": "prune_keep",
    "encoder": "encoder_keep",
}
_NUMBER_FIELDS = ("merge_ratio", "prune_keep", "encoder_keep")
_SCHEDULE_FIELDS = tuple(_TEXT_ITEMS.values())


class LevelError(ValueError):
    """An invalid level; `field` names the part at fault (a JSON key, e.g. "prune_layers[0]")."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class AimLevel:
    """One of: a preset name, a budget (fraction of AIM-off LLM prefill FLOPs), an explicit schedule.

    `encoder_keep` goes with a preset or a budget (an explicit schedule holds its own); with a
    budget it may be `AUTO`: the budget then covers the whole prefill and the solver picks the keep.
    """

    preset: str | None = None
    budget: float | None = None
    schedule: AimSchedule | None = None
    encoder_keep: float | str = 1.0

    def __post_init__(self) -> None:
        if sum(value is not None for value in (self.preset, self.budget, self.schedule)) != 1:
            raise LevelError("a level is exactly one of a preset, a budget or an explicit schedule")
        if self.encoder_keep == AUTO:
            if self.budget is None:
                message = "encoder_keep 'auto' goes with a budget (it sizes encoder and LLM together)"
                raise LevelError(message, "encoder_keep")
        else:
            try:  # the schedule owns the rule for encoder_keep
                AimSchedule(encoder_keep=self.encoder_keep)
            except (TypeError, ValueError) as exc:
                raise LevelError(str(exc), "encoder_keep") from None
        if self.schedule is not None and self.encoder_keep != 1.0:
            raise LevelError("an explicit level carries encoder_keep in its schedule", "encoder_keep")
        if self.preset is not None and self.preset not in PRESETS:
            raise LevelError(
                f"unknown preset {self.preset!r}; expected one of {', '.join(PRESETS)}", "preset"
            )
        if self.budget is not None:
            _check_number(self.budget, "budget")
            if not 0.0 < self.budget <= 1.0:
                raise LevelError(f"budget must be in (0, 1], got {self.budget}", "budget")

    @property
    def whole_prefill(self) -> bool:
        """A budget over encoder + LLM FLOPs, the encoder keep chosen by the solver."""
        return self.encoder_keep == AUTO

    def _given_encoder_keep(self) -> float | str | None:
        """`encoder_keep` when it is not the default (AUTO, or a keep below 1), else None."""
        keep = self.encoder_keep
        return keep if keep == AUTO or keep < 1.0 else None  # type: ignore[operator]

    @property
    def text(self) -> str:
        """The canonical text form (parses back to this level)."""
        keep = self._given_encoder_keep()
        encoder = "" if keep is None else f",encoder:{keep if keep == AUTO else _decimal(keep)}"
        if self.preset is not None:
            return self.preset + encoder
        if self.budget is not None:
            return f"budget:{_decimal(self.budget)}{encoder}"
        s = self.schedule
        assert s is not None
        items = [f"merge:{_decimal(s.merge_ratio)}"]
        if s.prune_layers is not None:
            items.append("prune:{}-{}".format(*s.prune_layers))
        if s.merge_method != "aim":
            items.append(f"method:{s.merge_method}")
        if s.prune_method != "pagerank":
            items.append(f"importance:{s.prune_method}")
        if s.prune_keep is not None:
            items.append(f"keep:{_decimal(s.prune_keep)}")
        if s.merges_in_encoder:
            items.append(f"encoder:{_decimal(s.encoder_keep)}")
        return ",".join(items)

    @property
    def label(self) -> str:
        """A bounded name for metric labels: the preset, "budget" or "custom"."""
        if self.preset is not None:
            return self.preset
        return "budget" if self.budget is not None else "custom"

    def engine_kwargs(self) -> dict[str, Any]:
        """The canonical engine form; an explicit level always carries its merge ratio, so an
        explicit AIM-off level stays distinguishable from "no level" (the server default)."""
        keep = self._given_encoder_keep()
        encoder = {} if keep is None else {ENCODER_KEEP: keep}
        if self.preset is not None:
            return {PRESET: self.preset, **encoder}
        if self.budget is not None:
            return {BUDGET: self.budget, **encoder}
        assert self.schedule is not None
        return {MERGE_RATIO: self.schedule.merge_ratio, **schedule_kwargs(self.schedule)}

    def resolve(self, num_layers: int, solve_budget: Callable[[float, bool], AimSchedule]) -> AimSchedule:
        """The concrete schedule for a model of `num_layers` layers (LevelError if it does not fit).

        `solve_budget(budget, whole_prefill)`: the schedule of a budget; over encoder + LLM FLOPs
        with the encoder keep chosen when `whole_prefill`, else over the LLM's.
        """
        if self.preset is not None:
            return replace(preset_schedule(self.preset, num_layers), encoder_keep=self.encoder_keep)
        if self.budget is not None:
            if self.whole_prefill:
                return solve_budget(self.budget, True)
            return replace(solve_budget(self.budget, False), encoder_keep=self.encoder_keep)
        assert self.schedule is not None
        try:
            self.schedule.check_depth(num_layers)
        except ValueError as exc:
            raise LevelError(str(exc), "prune_layers") from None
        return self.schedule


OFF = AimLevel(preset="off")


def schedule_kwargs(schedule: AimSchedule) -> dict[str, Any]:
    """The canonical engine form of a resolved schedule: empty when AIM is off, defaults left out."""
    kwargs: dict[str, Any] = {}
    if schedule.merges:
        kwargs[MERGE_RATIO] = schedule.merge_ratio
        if schedule.merge_method != "aim":
            kwargs[MERGE_METHOD] = schedule.merge_method
    if schedule.prune_layers is not None:
        kwargs[PRUNE_L1], kwargs[PRUNE_L2] = schedule.prune_layers
        if schedule.prune_method != "pagerank":
            kwargs[PRUNE_METHOD] = schedule.prune_method
        if schedule.prune_keep is not None:
            kwargs[PRUNE_KEEP] = schedule.prune_keep
    if schedule.merges_in_encoder:
        kwargs[ENCODER_KEEP] = schedule.encoder_keep
    return kwargs


def without_engine_keys(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs` minus AIM's keys (what the HF processor may see)."""
    return {key: value for key, value in kwargs.items() if key not in ENGINE_KEYS and key != BUDGET_OF}


def budget_note(level: AimLevel) -> dict[str, str]:
    """The `BUDGET_OF` entry of a budget level ({} for other levels)."""
    if level.budget is None:
        return {}
    return {BUDGET_OF: f"{'prefill' if level.whole_prefill else 'llm'}:{level.budget!r}"}


def budget_of(kwargs: Mapping[str, Any]) -> tuple[float, bool] | None:
    """(budget, over the whole prefill) from canonical kwargs, None without a budget level."""
    note = kwargs.get(BUDGET_OF)
    if not isinstance(note, str) or ":" not in note:
        return None
    scope, budget = note.split(":", 1)
    return float(budget), scope == "prefill"


# -- text form ---------------------------------------------------------------------------------
def parse_text(text: str) -> AimLevel:
    """A level in the text form."""
    if not isinstance(text, str):
        raise LevelError(f"a level must be text, got {type(text).__name__}")
    value = text.strip().lower()
    if not value or len(value) > MAX_TEXT_CHARS:
        raise LevelError(f"a level must be 1-{MAX_TEXT_CHARS} characters")
    head, sep, rest = value.partition(",")
    head = head.strip()
    if head in PRESETS or head.startswith("budget:"):
        encoder_keep = _parse_encoder_item(rest) if sep else 1.0
        if head in PRESETS:
            return AimLevel(preset=head, encoder_keep=encoder_keep)
        budget = _parse_number(head.removeprefix("budget:"), "budget")
        return AimLevel(budget=budget, encoder_keep=encoder_keep)
    if ":" not in value:
        raise LevelError(f"unknown level {value!r} (not a preset, a budget or merge/prune items)", "preset")
    fields: dict[str, Any] = {}
    for item in value.split(","):
        key, sep, arg = item.strip().partition(":")
        name = _TEXT_ITEMS.get(key.strip())
        if not sep or name is None:
            raise LevelError(f"unknown item {item.strip()!r}")
        if name in fields:
            raise LevelError(f"{key.strip()!r} given twice")
        if name in _NUMBER_FIELDS:
            fields[name] = _parse_number(arg, name)
        elif name == "prune_layers":
            fields[name] = _parse_layers(arg)
        else:
            fields[name] = arg.strip()
    return _explicit(fields)


def _parse_encoder_item(text: str) -> float | str:
    """The ",encoder:<keep>" (or ",encoder:auto") that may follow a preset or a budget."""
    key, sep, arg = text.strip().partition(":")
    if key.strip() != "encoder" or not sep:
        raise LevelError(f"a preset or budget takes only 'encoder:<0-1>' after it, got {text.strip()!r}")
    return AUTO if arg.strip() == AUTO else _parse_number(arg, "encoder_keep")


def _parse_number(text: str, field: str) -> float:
    if not _NUMBER.fullmatch(text.strip()):
        raise LevelError(f"{text.strip()!r} is not a plain decimal number", field)
    return float(text)


def _parse_layers(text: str) -> tuple[int, int]:
    match = _LAYERS.fullmatch(text.strip())
    if match is None:
        raise LevelError(f"pruning layers must be '<l1>-<l2>', got {text.strip()!r}", "prune_layers")
    return int(match[1]), int(match[2])


# -- JSON form ---------------------------------------------------------------------------------
def parse_json(value: object) -> AimLevel:
    """A level in the JSON form (a text-form string, or one of the objects)."""
    if isinstance(value, str):
        return parse_text(value)
    if not isinstance(value, dict):
        raise LevelError(f"a level must be a string or an object, got {type(value).__name__}")
    if not value:
        raise LevelError("an empty object names no level; give preset, budget, merge_ratio or prune_layers")
    if "preset" in value or "budget" in value:
        key = "preset" if "preset" in value else "budget"
        _only_key(value, key)
        encoder_keep = _check_encoder_keep(value.get("encoder_keep", 1.0), "encoder_keep")
        if key == "preset":
            if not isinstance(value[key], str):
                raise LevelError(f"preset must be a string, got {type(value[key]).__name__}", "preset")
            return AimLevel(preset=value[key].strip().lower(), encoder_keep=encoder_keep)
        return AimLevel(budget=_check_number(value[key], "budget"), encoder_keep=encoder_keep)
    unknown = sorted(set(value) - set(_SCHEDULE_FIELDS))
    if unknown:
        raise LevelError(f"unknown key {unknown[0]!r}", unknown[0])
    fields = dict(value)
    for name in _NUMBER_FIELDS:
        if fields.get(name) is not None:
            _check_number(fields[name], name)
    if "prune_layers" in fields:
        fields["prune_layers"] = _json_layers(fields["prune_layers"])
    return _explicit(fields)


def _only_key(value: dict, key: str) -> None:
    others = sorted(set(value) - {key, "encoder_keep"})
    if others:
        raise LevelError(f"{key} cannot be combined with {others[0]!r}", others[0])


def _json_layers(value: object) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise LevelError(f"prune_layers must be a list [l1, l2], got {value!r}", "prune_layers")
    for i, layer in enumerate(value):
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= MAX_LAYER:
            raise LevelError(
                f"a pruning layer must be an integer in 0-{MAX_LAYER}, got {layer!r}", f"prune_layers[{i}]"
            )
    return value[0], value[1]


# -- engine form -------------------------------------------------------------------------------
def parse_engine_kwargs(kwargs: Mapping[str, Any]) -> AimLevel | None:
    """The level in vLLM `mm_processor_kwargs` (None when no AIM key is present)."""
    present = [key for key in ENGINE_KEYS if key in kwargs]
    if not present:
        return None
    kinds = {PRESET: "preset", BUDGET: "budget"}
    if len({kinds.get(key, "explicit") for key in present if key != ENCODER_KEEP}) > 1:
        raise LevelError(f"give one of {PRESET}, {BUDGET} or explicit merge/prune keys, not {present}")
    encoder_keep = _check_encoder_keep(kwargs.get(ENCODER_KEEP, 1.0), ENCODER_KEEP)
    if PRESET in kwargs:
        if kwargs[PRESET] not in PRESETS:
            raise LevelError(f"{PRESET} must be one of {', '.join(PRESETS)}, got {kwargs[PRESET]!r}", PRESET)
        return AimLevel(preset=kwargs[PRESET], encoder_keep=encoder_keep)
    if BUDGET in kwargs:
        budget = _check_number(kwargs[BUDGET], BUDGET)
        if not 0.0 < budget <= 1.0:
            raise LevelError(f"{BUDGET} must be in (0, 1], got {budget}", BUDGET)
        return AimLevel(budget=budget, encoder_keep=encoder_keep)
    fields: dict[str, Any] = {}
    numbers = ((MERGE_RATIO, "merge_ratio"), (PRUNE_KEEP, "prune_keep"), (ENCODER_KEEP, "encoder_keep"))
    for key, name in numbers:
        if key in kwargs:
            fields[name] = _check_number(kwargs[key], key)
    for key, name in ((MERGE_METHOD, "merge_method"), (PRUNE_METHOD, "prune_method")):
        if key in kwargs:
            fields[name] = kwargs[key]
    if PRUNE_L2 in kwargs and PRUNE_L1 not in kwargs:
        raise LevelError(f"{PRUNE_L2} needs {PRUNE_L1}", PRUNE_L2)
    if PRUNE_L1 in kwargs:
        if PRUNE_L2 not in kwargs and PRUNE_KEEP not in kwargs:
            raise LevelError(
                f"give both {PRUNE_L1} and {PRUNE_L2} ({PRUNE_L2} optional with {PRUNE_KEEP})", PRUNE_L2
            )
        l1 = _check_integer(kwargs[PRUNE_L1], PRUNE_L1)
        fields["prune_layers"] = (
            l1,
            _check_integer(kwargs[PRUNE_L2], PRUNE_L2) if PRUNE_L2 in kwargs else l1 + 1,
        )
    return _explicit(fields)


# -- shared checks -----------------------------------------------------------------------------
def _explicit(fields: dict[str, Any]) -> AimLevel:
    """An explicit level from AimSchedule fields (merge_ratio, prune_layers or encoder_keep among them)."""
    if all(fields.get(name) is None for name in ("merge_ratio", "prune_layers", "encoder_keep")):
        raise LevelError("give merge_ratio, prune_layers or encoder_keep (or several)")
    for name in ("merge_ratio", "encoder_keep"):
        if fields.get(name) is None:
            fields.pop(name, None)
    for name in ("merge_method", "prune_method"):
        choices = MERGE_METHODS if name == "merge_method" else PRUNE_METHODS
        if name in fields and fields[name] not in choices:
            raise LevelError(f"{name} must be one of {', '.join(choices)}, got {fields[name]!r}", name)
    if fields.get("prune_keep") is not None and fields.get("prune_layers") is None:
        raise LevelError("prune_keep needs prune_layers", "prune_keep")
    layers = fields.get("prune_layers")
    if layers is not None and not 0 <= layers[0] < layers[1] <= MAX_LAYER:
        raise LevelError(
            f"prune_layers must be [l1, l2] with 0 <= l1 < l2 <= {MAX_LAYER}, got {list(layers)}",
            "prune_layers",
        )
    try:
        return AimLevel(schedule=AimSchedule(**{k: v for k, v in fields.items() if v is not None}))
    except (TypeError, ValueError) as exc:
        raise LevelError(str(exc), _field_named(str(exc))) from None


def _field_named(message: str) -> str | None:
    return next((name for name in _SCHEDULE_FIELDS if message.startswith(name)), None)


def _check_number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise LevelError(f"{field} must be a number, got {value!r}", field)
    return float(value)


def _check_encoder_keep(value: object, field: str) -> float | str:
    """A keep fraction, or AUTO (valid with a budget only: `AimLevel` checks)."""
    return AUTO if value == AUTO else _check_number(value, field)


def _check_integer(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LevelError(f"{field} must be an integer, got {value!r}", field)
    return value


def _decimal(value: float) -> str:
    """Shortest exact plain decimal of a number: 0.25 -> '0.25', 1.0 -> '1', 1e-05 -> '0.00001'."""
    return format(Decimal(repr(float(value))), "f").removesuffix(".0")
