"""service.formatting: how numbers read in every text output."""

from __future__ import annotations

import pytest

from service.formatting import (
    format_bytes,
    format_duration,
    format_number,
    format_pair,
    format_percent,
    format_signed,
)


@pytest.mark.parametrize(
    ("value", "options", "text"),
    [
        (0.966583, {}, "0.9666"),
        (0.966583, {"digits": 2}, "0.97"),
        (12345, {}, "12,345"),  # counts keep every digit
        (None, {}, "—"),
        (None, {"missing": "n/a"}, "n/a"),
        (True, {}, "True"),  # a flag is no number
        (float("nan"), {}, "NaN"),
        (-0.0, {}, "0"),
        (0.91, {"decimals": 4}, "0.9100"),  # a column lines up
        (0.91, {"decimals": 4, "trim": True}, "0.91"),
        (0.0123, {"decimals": 4, "trim": True, "sign": True}, "+0.0123"),
        (-0.0123, {"decimals": 4, "sign": True}, "-0.0123"),
        (3012.345, {"decimals": 4}, "3,012.3"),  # a large error needs no fourth decimal
        (0.00004, {"decimals": 4}, "4.00e-05"),  # not 0.0000
    ],
)
def test_format_number(value, options, text):
    assert format_number(value, **options) == text


def test_the_siblings():
    assert format_pair(0.91, 0.966583) == ("0.91", "0.967")
    assert format_signed(-0.01) == "−0.0100"
    assert format_signed(0) == "±0"
    assert format_percent(0.125) == "12.5%"
    assert format_percent(0.25) == "25%"
    assert format_percent(0.125, decimals=2) == "12.50%"
    assert format_bytes(1536) == "1.5 KiB (1,536 bytes)"
    assert format_duration(125) == "2 min 5 s"
