"""Schedules as medvault.toml writes them: a cron expression ("0 2 * * 0", "@daily") or an
interval ("every 15m"), in a time zone; and a drill's pick ("latest", "random:30d").

Cron expressions are parsed and stepped by croniter on the zone's wall clock (naive local
times), then each wall time is placed on the time line here, so that daylight saving time is
handled in one place (docs/scheduling.md):

- a wall time that does not exist (the hour skipped in spring) fires at the first instant
  after the gap, once, however many skipped times fall in it;
- a wall time that occurs twice (the hour repeated in autumn) fires at its first occurrence
  only.

So a daily 02:30 job runs exactly once on both change days. Intervals are elapsed time and
ignore the zone: "every 15m" stays 15 minutes apart across a change.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from medvault.durations import parse_duration

UTC = dt.UTC
_INTERVAL = re.compile(r"^\s*every\s+(\d+\s*[smhd])\s*$", re.ASCII)
_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MAX_STEPS = 100_000  # wall times tried before a cron expression is judged never to fire


def parse_zone(name: str) -> ZoneInfo:
    """An IANA zone ("Europe/Amsterdam", "UTC"); ValueError naming it otherwise."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{name!r} is not a known IANA time zone (e.g. Europe/Amsterdam)"
        ) from None


@dataclass(frozen=True)
class Interval:
    """Every `every`, counted from the last firing."""

    every: dt.timedelta
    text: str

    def due_after(self, reference: dt.datetime) -> dt.datetime:
        return reference + self.every

    def latest_due(self, reference: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        """The last firing in (reference, now], None when there is none: after a long pause
        the missed firings are one (coalesced) and the rhythm keeps its phase."""
        if now < reference + self.every:
            return None
        return reference + self.every * ((now - reference) // self.every)


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression (or an @alias) on the wall clock of `zone`."""

    expression: str
    zone: ZoneInfo

    @property
    def text(self) -> str:
        return self.expression

    def _place(self, wall: dt.datetime) -> dt.datetime:
        """A naive wall time on the time line (UTC): its first occurrence, or the end of the
        gap it falls in."""
        first = wall.replace(tzinfo=self.zone, fold=0)
        if first.astimezone(UTC).astimezone(self.zone).replace(tzinfo=None) == wall:
            return first.astimezone(UTC)
        # Skipped by a change: the change happens between the two readings of the wall time.
        low = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        high = first.astimezone(UTC)
        before = low.astimezone(self.zone).utcoffset()
        while high - low > dt.timedelta(seconds=1):
            middle = low + (high - low) / 2
            if middle.astimezone(self.zone).utcoffset() == before:
                low = middle
            else:
                high = middle
        return high.replace(microsecond=0)

    def _wall(self, moment: dt.datetime) -> dt.datetime:
        return moment.astimezone(self.zone).replace(tzinfo=None, microsecond=0)

    def due_after(self, reference: dt.datetime) -> dt.datetime:
        """The first firing strictly after `reference`."""
        from croniter import croniter

        steps = croniter(self.expression, self._wall(reference))
        for _ in range(_MAX_STEPS):
            placed = self._place(steps.get_next(dt.datetime))
            if placed > reference:
                return placed
        raise ValueError(f"{self.expression!r} never fires")

    def latest_due(self, reference: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        """The last firing in (reference, now], None when there is none. Placing wall times
        keeps their order, so the latest wall time at or before now's is the one."""
        from croniter import croniter

        wall = self._wall(now) + dt.timedelta(seconds=1)  # get_prev is strictly before
        placed = self._place(croniter(self.expression, wall).get_prev(dt.datetime))
        return placed if reference < placed <= now else None


Schedule = Interval | Cron


def parse_schedule(text: str, zone: ZoneInfo) -> Schedule:
    """ValueError with the accepted forms when `text` is neither."""
    if not isinstance(text, str):
        raise ValueError("a schedule is a string: a cron expression or 'every N[s|m|h|d]'")
    interval = _INTERVAL.match(text)
    if interval is not None:
        every = parse_duration(interval.group(1))
        if every <= dt.timedelta(0):
            raise ValueError(f"{text!r}: an interval must be at least 1s")
        return Interval(every, text.strip())
    if text.strip().lower().startswith("every"):
        raise ValueError(f"{text!r} is not an interval: write 'every' and N s, m, h or d")
    return Cron(_cron_expression(text), zone)


def _cron_expression(text: str) -> str:
    from croniter import croniter

    expression = " ".join(text.split())
    fields = expression.split(" ")
    if expression.lower() in _ALIASES:
        return expression.lower()
    # croniter reads a sixth field as seconds and a seventh as a year: neither is cron as
    # crontab(5) writes it; seconds are written as an interval here.
    if len(fields) != 5:
        raise ValueError(
            f"{text!r} is not a cron expression: five fields (minute hour day month weekday), "
            "e.g. '0 2 * * 0', or an interval such as 'every 15m'"
        )
    if not croniter.is_valid(expression):
        raise ValueError(f"{text!r} is not a valid cron expression (minute hour day month weekday)")
    return expression


@dataclass(frozen=True)
class DrillPick:
    """Which snapshot a scheduled drill restores: the newest, or one drawn at random from
    those taken within `within` (the draw is seeded by the run, so it is in the record)."""

    within: dt.timedelta | None = None  # None: the newest

    @property
    def random(self) -> bool:
        return self.within is not None


def parse_drill_pick(text: str) -> DrillPick:
    if text.strip() == "latest":
        return DrillPick()
    kind, _, span = text.strip().partition(":")
    if kind == "random" and span:
        return DrillPick(parse_duration(span))
    raise ValueError(f"{text!r}: write 'latest' or 'random:N[d|h|w]' (e.g. random:30d)")
