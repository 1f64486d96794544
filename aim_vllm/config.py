"""Engine-wide AIM settings from the environment: the level of requests that name none.

`AIM_VLLM_DEFAULT` holds a level in the text form of `core.level` (e.g. `balanced`,
`budget:0.2`, `merge:0.25,prune:14-22`); `aim-vllm engine --aim-default LEVEL` sets it after
checking it. Unset or empty: requests without AIM keys run as stock vLLM.
"""

from __future__ import annotations

import os

from aim_vllm.core.level import EXPECTED, AimLevel, LevelError, parse_text

DEFAULT_ENV = "AIM_VLLM_DEFAULT"


def default_level() -> AimLevel | None:
    """The server-wide default level (None when unset); LevelError naming the variable when invalid."""
    raw = os.environ.get(DEFAULT_ENV, "").strip()
    if not raw:
        return None
    try:
        return parse_text(raw)
    except LevelError as exc:
        raise LevelError(f"{DEFAULT_ENV}={raw!r} is not a level: {exc}; expected {EXPECTED}") from None
