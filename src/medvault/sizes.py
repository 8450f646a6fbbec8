"""Sizes as people write them in medvault.toml: "500GB", "100MB", "1.5TiB", "4096".

kB, MB, GB, TB are powers of 1000, as storage vendors and S3 quotas count; KiB, MiB, GiB,
TiB powers of 1024. A bare number is bytes. Kept free of heavy imports, like durations.py.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "pb": 1000**5,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "pib": 1024**5,
}
_PATTERN = re.compile(r"^\s*(\d{1,15}(?:\.\d{1,6})?)\s*([a-z]*)\s*$", re.ASCII | re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes; ValueError with the accepted forms when `text` is not a size."""
    match = _PATTERN.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"{text!r} is not a size: write a number and a unit (B, kB, MB, GB, TB, or "
            "KiB, MiB, GiB, TiB), as in 100MB or 500GB"
        )
    return int(float(match.group(1)) * _UNITS[unit])
