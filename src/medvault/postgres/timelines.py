"""Timelines: history files, the chain of timelines a recovery follows, and the WAL it reads
from each, with the segments an archive lacks along that chain.

The archive is anything that lists and fetches archived WAL files by name (`ArchivedWal`;
the repository's WalArchive in practice): this module knows PostgreSQL, not the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from medvault.errors import IntegrityError, UsageError
from medvault.postgres.lsn import (
    MAX_TIMELINE,
    SEGMENT,
    numbered_segment_name,
    parse_lsn,
    segment_number,
)

_TIMELINE = re.compile(r"[0-9]{1,10}")


class ArchivedWal(Protocol):
    def names(self, timeline: int | None = None) -> list[str]: ...

    def fetch(self, name: str) -> bytes | None: ...


def history_name(timeline: int) -> str:
    return f"{timeline:08X}.history"


def parse_history(text: str) -> list[tuple[int, int]]:
    """A timeline history file: [(parent timeline, LSN where it ended)], oldest first."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(None, 2)
        try:
            if len(fields) < 2 or not _TIMELINE.fullmatch(fields[0]):
                raise ValueError(line)
            timeline = int(fields[0])
            if not 1 <= timeline <= MAX_TIMELINE:
                raise ValueError(line)
            entries.append((timeline, parse_lsn(fields[1])))
        except (ValueError, UsageError):
            raise IntegrityError(f"timeline history line {number} is malformed: {line!r}") from None
    return entries


@dataclass(frozen=True)
class Period:
    """A stretch of WAL that recovery reads from one timeline: [begin, end)."""

    timeline: int
    begin: int
    end: int | None  # None: the target timeline, open-ended


def timeline_periods(archive: ArchivedWal, timeline: int) -> tuple[list[Period], list[str]]:
    """How `timeline` came to be, from its archived history file; and missing files."""
    if timeline <= 1:
        return [Period(timeline, 0, None)], []
    raw = archive.fetch(history_name(timeline))
    if raw is None:
        return [Period(timeline, 0, None)], [history_name(timeline)]
    periods, begin = [], 0
    for parent, switch in parse_history(raw.decode("ascii", "replace")):
        periods.append(Period(parent, begin, switch))
        begin = switch
    periods.append(Period(timeline, begin, None))
    return periods, []


def period_segments(period: Period, segment_size: int) -> tuple[int, int | None]:
    """Segment numbers recovery reads from the period's timeline: a timeline switched to at
    LSN L supplies the segment holding L onwards (PostgreSQL copies that segment's start
    into the new timeline's file), its parent everything before."""
    first = period.begin // segment_size
    last = None if period.end is None else period.end // segment_size - 1
    return first, last


def period_of(periods: list[Period], segno: int, segment_size: int) -> Period:
    """The period that supplies segment number `segno` (a switch point's segment comes from
    the newer timeline)."""
    return next(p for p in periods if p.end is None or segno < p.end // segment_size)


def missing_segments(
    archive: ArchivedWal,
    timeline: int,
    start_lsn: int,
    stop_lsn: int | None,
    segment_size: int,
) -> list[str]:
    """Files recovery needs, and the archive lacks, to replay from start_lsn to stop_lsn on
    `timeline` (up to its newest archived segment when stop_lsn is None), following the
    timeline switches in the archived history files."""
    periods, missing = timeline_periods(archive, timeline)
    first_needed = start_lsn // segment_size
    archived: dict[int, set[int]] = {}
    for period in periods:
        archived[period.timeline] = {
            segment_number(n, segment_size)
            for n in archive.names(period.timeline)
            if SEGMENT.match(n)
        }
    if stop_lsn is None:
        last_needed = first_needed
        for period in periods:
            low, high = period_segments(period, segment_size)
            inside = [
                s for s in archived[period.timeline] if s >= low and (high is None or s <= high)
            ]
            last_needed = max([last_needed, *inside])
    else:
        last_needed = max(first_needed, (stop_lsn - 1) // segment_size)
    for period in periods:
        low, high = period_segments(period, segment_size)
        low = max(low, first_needed)
        high = last_needed if high is None else min(high, last_needed)
        for segno in range(low, high + 1):
            if segno not in archived[period.timeline]:
                missing.append(numbered_segment_name(period.timeline, segno, segment_size))
    return missing
