"""Numbers written for people: the CLI, the model card, promotion messages and reports.

Every text output formats its numbers here, so a score reads the same in `modelctl`, on the
model card and in a refusal message. JSON answers carry the numbers themselves, not these
strings. Nothing here imports more than the standard library, so every layer may use it.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"


def format_number(
    value: Any,
    digits: int = 4,
    *,
    decimals: int | None = None,
    trim: bool = False,
    sign: bool = False,
    missing: str = MISSING,
) -> str:
    """One number as text.

    By default a float keeps `digits` significant digits (compact, for prose and
    statistics). With `decimals`, it gets that many places instead, so a column of scores
    lines up; `trim` then drops trailing zeros. Whole numbers (ints) keep every digit,
    grouped by thousands. `sign` writes "+" before a positive value. `missing` stands for
    None; any other non-number is written as it is.
    """
    if not is_number(value):
        return missing if value is None else str(value)
    if math.isnan(value):
        return "NaN"
    if value == 0:
        value = abs(value)  # -0.0 reads as 0
    if isinstance(value, int):
        text = f"{value:,}"
    elif decimals is None:
        text = f"{value:.{digits}g}"
    else:
        text = _fixed(value, decimals, trim)
    return f"+{text}" if sign and value > 0 else text


def _fixed(value: float, decimals: int, trim: bool) -> str:
    if abs(value) >= 1000:
        # Large values (an MSE, a count of seconds): the fraction says little.
        text = f"{value:,.1f}"
    elif value != 0 and abs(value) < 0.5 * 10**-decimals:
        # Would round to 0.0000: keep its magnitude instead.
        return f"{value:.2e}"
    else:
        text = f"{value:.{decimals}f}"
    if trim and "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_pair(a: float, b: float) -> tuple[str, str]:
    """Two scores written compactly, with as many digits as it takes to tell them apart."""
    for digits in range(3, 18):
        a_text, b_text = format_number(a, digits), format_number(b, digits)
        if a_text != b_text or a == b:
            return a_text, b_text
    return repr(a), repr(b)


def format_signed(value: Any) -> str:
    """A difference in a table: always signed (typographic minus, ± for none), 4 decimals."""
    if not is_number(value):
        return MISSING
    mark = "+" if value > 0 else "−" if value < 0 else "±"
    return mark + format_number(abs(value), decimals=4)


def format_percent(value: Any, decimals: int | None = None) -> str:
    """A share (0.25) as a percentage: "25%"; one decimal when it is not whole, unless
    `decimals` fixes the places."""
    if not is_number(value):
        return MISSING
    percent = value * 100
    if decimals is not None:
        return f"{percent:.{decimals}f}%"
    return f"{percent:.0f}%" if percent == int(percent) else f"{percent:.1f}%"


def format_bytes(size: float) -> str:
    """A file size in binary units, with the exact count: "1.5 KiB (1,536 bytes)"."""
    size = int(size)
    if size < 1024:
        return f"{size:,} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit} ({size:,} bytes)"


def format_duration(seconds: float) -> str:
    """A duration as a person says it: "12.3 s", "4 min 5 s", "2 h 10 min"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def is_number(value: Any) -> bool:
    """A real number, not a bool (True is an int to Python, not a score to a reader)."""
    return isinstance(value, int | float) and not isinstance(value, bool)
