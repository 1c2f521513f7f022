"""JSON text of any value the service renders (an error body, a log line), never failing.

orjson refuses a few values that can come from a client's bytes: a string holding a
lone surrogate (a JSON body may spell one as an escape like ``\\ud800``; Python's own
parser takes it) and an integer beyond 64 bits. When it does, the value is made
printable and encoded again: such a string keeps its text with each lone surrogate
written as the six characters ``\\ud800`` (not the JSON escape, which strict parsers
such as orjson and serde_json refuse), such an integer becomes its decimal text, and
anything else orjson does not know becomes its ``str``. Valid UTF-8 and every JSON
parser can read the result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

# Nesting deeper than this in a rendered value is cut off: what we render is ours
# (messages, details), and a client's deeply nested value must not make it recurse.
MAX_DEPTH = 32
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def dumps(value: Any, option: int = 0) -> bytes:
    try:
        return orjson.dumps(value, option=option)
    except TypeError:
        return orjson.dumps(printable(value), option=option)


def printable(value: Any, depth: int = 0) -> Any:
    """``value`` with everything orjson refuses replaced as described above."""
    if isinstance(value, str):
        return text(value)
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _UINT64_MAX else str(value)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        return printable(value.item(), depth)
    if depth >= MAX_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {_key(k): printable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return text(str(value))


def text(value: str) -> str:
    """A string as valid Unicode text: lone surrogates written as ``\\udxxx``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _key(key: Any) -> str:
    return text(key) if isinstance(key, str) else text(str(key))
