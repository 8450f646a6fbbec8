"""Durations as people write them in medvault.toml: "15m", "1h", "30d", "2w", "7y".

A year is 365 days and a month ("mo") 30: retention floors err on the side of keeping.
Kept free of heavy imports: wal-push reads a tier's floor on its fast path.
"""

from __future__ import annotations

import datetime as dt
import re

_UNITS = {
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "mo": 30 * 86400,
    "y": 365 * 86400,
}
_PATTERN = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|mo|y)\s*$")


def parse_duration(text: str) -> dt.timedelta:
    """ValueError with the accepted forms when `text` is not one."""
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a duration: write a whole number and a unit "
            "(s, m, h, d, w, mo, y), as in 15m, 1h, 30d, 7y"
        )
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def format_duration(span: dt.timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit in ("y", "d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"
