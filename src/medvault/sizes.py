"""Sizes as people write them in medvault.toml: "1MB", "100MB", "512kB", "2GiB", "4096".

Units are powers of 1024 whether written "MB" or "MiB", as PostgreSQL reads its own settings
(shared_buffers = "128MB"): the DBAs who write medvault.toml write those too. A bare number
is bytes.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_PATTERN = re.compile(r"^\s*(\d{1,15})\s*(?:([kmgt])(?:i?b)?|b)?\s*$", re.ASCII | re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes; ValueError with the accepted forms when `text` is not a size."""
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a size: write a whole number and a unit (B, kB, MB, GB, TB; "
            "powers of 1024), as in 1MB, 100MB, 2GB"
        )
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
