"""Which snapshots a retention policy keeps, and by which rule.

The rules are the usual grandfather-father-son ones: keep the newest `last` snapshots; for
hourly, daily, weekly, monthly and yearly, keep the newest snapshot of each of the N most
recent periods that have one; keep everything taken within a span of the newest snapshot
(measured from the newest snapshot, so that backups that stopped do not age every snapshot
out). A snapshot is kept when any rule keeps it. Times are UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from medvault.durations import MAX_DURATION, format_duration

DAY = dt.timedelta(days=1)
# How far back each rule can reach per unit of its count (a month is 30 days, a year 365):
# what the floor check compares.
_REACH = {
    "hourly": dt.timedelta(hours=1),
    "daily": DAY,
    "weekly": 7 * DAY,
    "monthly": 30 * DAY,
    "yearly": 365 * DAY,
}


def _bucket(rule: str) -> Callable[[dt.datetime], tuple[int, ...]]:
    if rule == "hourly":
        return lambda t: (t.year, t.month, t.day, t.hour)
    if rule == "daily":
        return lambda t: (t.year, t.month, t.day)
    if rule == "weekly":
        return lambda t: t.isocalendar()[:2]
    if rule == "monthly":
        return lambda t: (t.year, t.month)
    return lambda t: (t.year,)


@dataclass(frozen=True)
class RetentionPolicy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: dt.timedelta | None = None

    @property
    def empty(self) -> bool:
        return (
            not (
                self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly
            )
            and not self.within
        )

    def reach(self) -> dt.timedelta:
        """How far back in time the policy keeps snapshots at most (given enough of them)."""
        spans = [self.within or dt.timedelta(0)]
        # A count reaching past MAX_DURATION keeps as long as any duration can (and times a
        # unit it would overflow a timedelta).
        spans += [
            min(getattr(self, rule), MAX_DURATION // unit) * unit for rule, unit in _REACH.items()
        ]
        return max(spans)

    def describe(self) -> str:
        parts = [f"last {self.last}"] if self.last else []
        parts += [f"{getattr(self, r)} {r}" for r in _REACH if getattr(self, r)]
        if self.within:
            parts.append(f"within {format_duration(self.within)}")
        return ", ".join(parts) or "keep everything"


@dataclass(frozen=True)
class Decision:
    snapshot_id: str
    time: dt.datetime
    keep: bool
    reasons: tuple[str, ...]  # the rules that keep it ("daily", "last", …)


def apply(policy: RetentionPolicy, snapshots: Sequence[tuple[str, dt.datetime]]) -> list[Decision]:
    """Decisions for (id, time) pairs of one source, newest first."""
    ordered = sorted(snapshots, key=lambda s: s[1], reverse=True)
    reasons: dict[str, list[str]] = {sid: [] for sid, _ in ordered}
    for sid, _ in ordered[: policy.last]:
        reasons[sid].append("last")
    for rule in _REACH:
        count = getattr(policy, rule)
        if not count:
            continue
        key = _bucket(rule)
        seen: set[tuple[int, ...]] = set()
        for sid, when in ordered:
            bucket = key(when)
            if bucket in seen:
                continue
            if len(seen) == count:
                break
            seen.add(bucket)
            reasons[sid].append(rule)
    if policy.within is not None and ordered:
        newest = ordered[0][1]
        for sid, when in ordered:
            if newest - when <= policy.within:
                reasons[sid].append(f"within {format_duration(policy.within)}")
    if policy.empty:
        for sid in reasons:
            reasons[sid].append("no policy")
    return [Decision(sid, when, bool(reasons[sid]), tuple(reasons[sid])) for sid, when in ordered]
