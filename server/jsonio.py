"""JSON in and out of the gateway's hot path: msgspec first, the standard library as the judge.

msgspec's decoder and encoder are several times faster than `json`, and stricter: whatever it
refuses (NaN, lone surrogates, numbers past float range, deep nesting, malformed input) goes to
the stdlib call the caller names, which accepts exactly what it accepted before and words the
errors (`body.py`). So the gateway accepts and refuses the same bodies either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def loads(data: bytes, fallback: Callable[[bytes], Any] = json.loads) -> Any:
    """`data` decoded; what msgspec refuses is decided by `fallback`."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return fallback(data)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (as `json.dumps(..., ensure_ascii=False, separators=(",", ":"))`;
    non-finite floats become null, which is valid JSON where the stdlib writes NaN)."""
    return _encoder.encode(value)
