"""Durations as people write them in medvault.toml: "15m", "1h", "30d", "2w", "7y".

A year is 365 days and a month ("mo") 30: retention floors err on the side of keeping.
Nothing longer than MAX_DURATION is accepted: no retention or window needs more, and dates
computed from a longer span (now minus a window, now plus a floor) leave the calendar.
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
_PATTERN = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|mo|y)\s*$", re.ASCII)
MAX_YEARS = 1000
MAX_DURATION = dt.timedelta(days=365 * MAX_YEARS)


def parse_duration(text: str) -> dt.timedelta:
    """ValueError with the accepted forms when `text` is not one."""
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a duration: write a whole number and a unit "
            "(s, m, h, d, w, mo, y), as in 15m, 1h, 30d, 7y"
        )
    # Compared as whole seconds first: a timedelta of 10**20 years cannot even be built (and
    # int() refuses numbers of thousands of digits).
    digits = match.group(1).lstrip("0") or "0"
    seconds = int(digits) * _UNITS[match.group(2)] if len(digits) <= 20 else None
    if seconds is None or seconds > MAX_DURATION.total_seconds():
        raise ValueError(
            f"{text.strip()!r} is too long: durations are at most {MAX_YEARS} years ({MAX_YEARS}y)"
        )
    return dt.timedelta(seconds=seconds)


def format_duration(span: dt.timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit in ("y", "d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"
