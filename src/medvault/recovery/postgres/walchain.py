"""The WAL chain a recovery reads: from the backup's start, across timeline switches (by the
archived history files), to the target or the newest archived segment; every file must be
archived before anything is restored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault.errors import RecoveryFailed, WalMissing
from medvault.postgres.facts import PhysicalFacts
from medvault.postgres.lsn import SEGMENT, format_lsn, parse_lsn, segment_name, segment_number
from medvault.postgres.timelines import (
    Period,
    history_name,
    missing_segments,
    period_of,
    period_segments,
    timeline_periods,
)
from medvault.recovery.postgres.reach import archive_reach, check_time_reached
from medvault.recovery.postgres.target import RecoveryTarget

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.repository.wal import WalArchive


@dataclass(frozen=True)
class WalRange:
    """The WAL recovery will read: from the backup's first segment to `last` on `timeline`."""

    timeline: int
    first: str
    last: str


def _target_timeline(archive: WalArchive, snapshot: Snapshot, target: RecoveryTarget) -> int:
    """The timeline recovery will follow: as PostgreSQL resolves 'latest', by probing
    history files upwards from the backup's timeline."""
    base = PhysicalFacts.of(snapshot).timeline
    if target.timeline == "current":
        return base
    if target.timeline.isdigit():
        return int(target.timeline)
    names = set(archive.names())
    timeline = base
    while history_name(timeline + 1) in names:
        timeline += 1
    return timeline


def check_wal_chain(repo: Repository, snapshot: Snapshot, target: RecoveryTarget) -> WalRange:
    """Every WAL file recovery needs is archived: from the backup's start on its timeline,
    across timeline switches, to the target LSN (or to the newest archived WAL, since a time,
    xid or name cannot be placed in WAL without reading it), and at least to the backup's
    own stop LSN. WalMissing names the gap."""
    from medvault.repository.wal import WalArchive

    facts = PhysicalFacts.of(snapshot)
    size = facts.wal_segment_size
    archive = WalArchive(repo, snapshot.source)
    # Recovery fetches through the secondary where the primary lacks a file, so the chain is
    # judged on what either holds.
    archive.with_secondary = True
    base = facts.timeline
    start = facts.start_lsn
    stop = facts.stop_lsn
    final = _target_timeline(archive, snapshot, target)
    periods, lacking = timeline_periods(archive, final)
    if lacking:
        raise _missing(snapshot, lacking)
    own = next((p for p in periods if p.timeline == base), None)
    if own is None:
        raise RecoveryFailed(
            f"timeline {final} does not descend from timeline {base} of backup "
            f"{snapshot.short_id}; recover with --target-timeline current, or use a backup "
            f"taken on timeline {final}"
        )
    if own.end is not None and own.end < stop:
        raise RecoveryFailed(
            f"timeline {base} branched off to a later timeline at {format_lsn(own.end)}, "
            f"before backup {snapshot.short_id} became consistent ({format_lsn(stop)}); "
            "recover with --target-timeline current, or use a newer backup"
        )
    if target.kind == "lsn":
        end: int | None = parse_lsn(target.value) + 1  # the segment holding the target itself
    elif target.kind == "immediate":
        end = stop
    else:
        end = None
    missing = missing_segments(archive, final, start, end, size)
    missing += missing_segments(archive, final, start, stop, size)
    if missing:
        raise _missing(snapshot, sorted(set(missing)))
    last = _last_segment(archive, periods, start, end, size)
    if target.kind == "time":
        reach = archive_reach(archive, periods, stop, last)
        check_time_reached(archive, snapshot, target, reach, last)
    return WalRange(final, facts.start_wal, last)


def _last_segment(
    archive: WalArchive, periods: list[Period], start: int, end: int | None, size: int
) -> str:
    """The last segment recovery reads: the one holding the target LSN, else the newest
    archived one along the timeline chain."""
    if end is not None:
        # A switch point's segment is read from the newer timeline (it copies the start).
        number = max(start, end - 1) // size
        where = period_of(periods, number, size)
        return str(segment_name(where.timeline, number * size, size))
    best: tuple[int, str] | None = None
    for period in periods:
        low, high = period_segments(period, size)
        low = max(low, start // size)
        for name in archive.names(period.timeline):
            if not SEGMENT.match(name):
                continue
            number = segment_number(name, size)
            if number >= low and (high is None or number <= high):
                best = max(best or (number, name), (number, name))
    return best[1] if best else str(segment_name(periods[0].timeline, start, size))


def _missing(snapshot: Snapshot, missing: list[str]) -> WalMissing:
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return WalMissing(
        f"the WAL archive of {snapshot.source} lacks {shown}, needed to recover backup "
        f"{snapshot.short_id} to the target; nothing was restored. Push it from the server's "
        "pg_wal if it is still there, or choose an earlier target or a newer backup"
    )
