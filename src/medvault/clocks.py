"""Clock skew between hosts. Times written by other hosts (snapshots, locks) are only as good
as their clocks; a time further than TOLERANCE ahead of ours is a clock problem to report,
never a reason to prefer that record."""

from __future__ import annotations

import datetime as dt

# Kerberos' default for the same question: how far two clocks may differ before it matters.
TOLERANCE = dt.timedelta(minutes=5)


def ahead_by(when: dt.datetime, now: dt.datetime | None = None) -> dt.timedelta | None:
    """How far `when` lies in the future beyond the tolerance; None when it does not."""
    ahead = when - (now or dt.datetime.now(dt.UTC))
    return ahead if ahead > TOLERANCE else None


def describe_span(span: dt.timedelta) -> str:
    seconds = abs(span.total_seconds())
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} seconds"
