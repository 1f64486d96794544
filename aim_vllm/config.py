"""The per-request AIM level as it travels through vLLM: `mm_processor_kwargs` keys.

A request asks for at most one kind of level (all keys optional; none = the server default):
  {"aim_preset": "off" | "light" | "balanced" | "max"}
  {"aim_merge_ratio": 0.25, "aim_prune_l1": 14, "aim_prune_l2": 22}   (prune keys: both or neither)
  {"aim_budget": 0.2}   (fraction of the baseline LLM prefill FLOPs)
Baselines at the same token counts (explicit form only):
  "aim_merge_method": "pool" | "random"       (instead of AIM's merging; default "aim")
  "aim_prune_method": "fastv"                 (text-to-visual attention instead of PageRank)
  "aim_prune_keep": 0.25 with "aim_prune_l1"  (prune once at l1 to this fraction; l2 optional)
The multimodal processor resolves it against the model (depth, token counts) into a concrete
`AimSchedule` and rewrites the kwargs into the canonical explicit form, so vLLM's processor,
encoder and prefix caches key on the schedule actually applied. The server-wide default is the
JSON object in the environment variable `AIM_VLLM_DEFAULT` (same keys), e.g. set by
`aim-vllm engine --aim-default balanced`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aim_vllm.core.schedule import OFF, PRESETS, AimSchedule, preset_schedule

PRESET, MERGE_RATIO, PRUNE_L1, PRUNE_L2, BUDGET = (
    "aim_preset",
    "aim_merge_ratio",
    "aim_prune_l1",
    "aim_prune_l2",
    "aim_budget",
)
MERGE_METHOD, PRUNE_METHOD, PRUNE_KEEP = "aim_merge_method", "aim_prune_method", "aim_prune_keep"
EXPLICIT_KEYS = (MERGE_RATIO, PRUNE_L1, PRUNE_L2, MERGE_METHOD, PRUNE_METHOD, PRUNE_KEEP)
AIM_KEYS = (PRESET, BUDGET, *EXPLICIT_KEYS)
DEFAULT_ENV = "AIM_VLLM_DEFAULT"


@dataclass(frozen=True)
class AimRequest:
    """A validated AIM level, not yet resolved against a model."""

    preset: str | None = None
    schedule: AimSchedule | None = None
    budget: float | None = None

    def resolve(self, num_layers: int, solve_budget: Callable[[float], AimSchedule]) -> AimSchedule:
        """The concrete schedule for a model of `num_layers` layers (ValueError if it does not fit)."""
        if self.preset is not None:
            return preset_schedule(self.preset, num_layers)
        if self.budget is not None:
            return solve_budget(self.budget)
        schedule = self.schedule or OFF
        schedule.check_depth(num_layers)
        return schedule


def parse_request(kwargs: Mapping[str, Any]) -> AimRequest | None:
    """The AIM level in `kwargs` (None if it has no AIM key); ValueError/TypeError when invalid."""
    present = [key for key in AIM_KEYS if key in kwargs]
    if not present:
        return None
    kinds = {PRESET: "preset", BUDGET: "budget"}
    if len({kinds.get(key, "explicit") for key in present}) > 1:
        raise ValueError(f"give one of {PRESET}, {BUDGET} or explicit merge/prune keys, not {present}")
    if PRESET in kwargs:
        preset = kwargs[PRESET]
        if preset not in PRESETS:
            raise ValueError(f"{PRESET} must be one of {', '.join(PRESETS)}, got {preset!r}")
        return AimRequest(preset=preset)
    if BUDGET in kwargs:
        budget = _number(kwargs, BUDGET)
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"{BUDGET} must be in (0, 1], got {budget}")
        return AimRequest(budget=budget)
    return AimRequest(schedule=_explicit_schedule(kwargs))


def _explicit_schedule(kwargs: Mapping[str, Any]) -> AimSchedule:
    keep = _number(kwargs, PRUNE_KEEP) if PRUNE_KEEP in kwargs else None
    has_l1, has_l2 = PRUNE_L1 in kwargs, PRUNE_L2 in kwargs
    complete = has_l1 if keep is not None else has_l1 == has_l2  # l2 is optional with a keep fraction
    if not complete or (has_l2 and not has_l1):
        raise ValueError(
            f"give both {PRUNE_L1} and {PRUNE_L2} ({PRUNE_L2} optional with {PRUNE_KEEP}), or neither"
        )
    prune = None
    if PRUNE_L1 in kwargs:
        l1 = _integer(kwargs, PRUNE_L1)
        prune = (l1, _integer(kwargs, PRUNE_L2) if PRUNE_L2 in kwargs else l1 + 1)
    return AimSchedule(
        merge_ratio=_number(kwargs, MERGE_RATIO) if MERGE_RATIO in kwargs else 1.0,
        prune_layers=prune,
        merge_method=_text(kwargs, MERGE_METHOD, "aim"),
        prune_method=_text(kwargs, PRUNE_METHOD, "pagerank"),
        prune_keep=keep,
    )


def canonical_kwargs(schedule: AimSchedule) -> dict[str, Any]:
    """The explicit keys describing `schedule` (empty when AIM is off; defaults left out)."""
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
    return kwargs


def without_aim_keys(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs` minus AIM's keys (what the HF processor may see)."""
    return {key: value for key, value in kwargs.items() if key not in AIM_KEYS}


def default_request() -> AimRequest | None:
    """The server-wide default level from `AIM_VLLM_DEFAULT` (None when unset)."""
    raw = os.environ.get(DEFAULT_ENV, "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{DEFAULT_ENV} must be a JSON object of AIM keys: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{DEFAULT_ENV} must be a JSON object of AIM keys, got {raw!r}")
    return parse_request(value)


def _number(kwargs: Mapping[str, Any], key: str) -> float:
    value = kwargs[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _text(kwargs: Mapping[str, Any], key: str, default: str) -> str:
    value = kwargs.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {type(value).__name__} {value!r}")
    return value


def _integer(kwargs: Mapping[str, Any], key: str) -> int:
    value = kwargs[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
    return value
