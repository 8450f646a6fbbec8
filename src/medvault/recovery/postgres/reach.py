"""The newest moment a recovery to a time can reach: the last commit or abort in the archived
WAL (read backwards from the newest segment), or, when that cannot be told, the arrival of
the newest segment. A time beyond it is refused before anything is restored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from medvault.errors import WalMissing
from medvault.postgres.facts import PhysicalFacts
from medvault.postgres.lsn import segment_name, segment_number
from medvault.postgres.timelines import Period, period_of
from medvault.recovery.postgres.target import RecoveryTarget

if TYPE_CHECKING:
    from medvault.postgres.walrecords import TransactionEnd
    from medvault.repository.records import Snapshot
    from medvault.repository.wal import WalArchive


# How far the store's clock (object times) may lag the server's (commit times).
CLOCK_SKEW_MARGIN_S = 30
# Segments read back from the newest while looking for the last transaction (64 x 16 MiB).
REACH_SEARCH_SEGMENTS = 64


@dataclass(frozen=True)
class ArchiveReach:
    """The newest moment a time target can reach: the last commit or abort in the archived
    WAL after a backup became consistent (None: there is none), found in `segment`.
    `known` is False when the search gave up (too many segments without one, or a segment
    missing), and then nothing can be said."""

    newest: TransactionEnd | None
    segment: str | None
    known: bool


def archive_reach(
    archive: WalArchive, periods: list[Period], consistent_lsn: int, last: str
) -> ArchiveReach:
    """Read the WAL backwards from `last` along the timeline chain, one segment at a time
    (decrypted in memory), until a segment holds a transaction's end after
    `consistent_lsn`. Usually the newest segment does."""
    from medvault.postgres.walrecords import transaction_ends

    cluster = archive.cluster()
    if cluster is None:
        return ArchiveReach(None, None, known=False)
    size = cluster.segment_size
    newest = segment_number(last, size)
    lowest = consistent_lsn // size
    following: bytes | None = None
    for number in range(newest, max(lowest, newest - REACH_SEARCH_SEGMENTS + 1) - 1, -1):
        period = period_of(periods, number, size)
        name = str(segment_name(period.timeline, number * size, size))
        data = archive.fetch(name)
        if data is None:
            return ArchiveReach(None, None, known=False)
        ends = [
            end
            for end in transaction_ends(data, number * size, following)
            if end.lsn >= consistent_lsn
        ]
        if ends:
            # Commit stamps are taken just before the record is written: nearly, not
            # strictly, in WAL order.
            return ArchiveReach(max(ends, key=lambda e: e.time), name, known=True)
        following = data
    return ArchiveReach(None, None, known=newest - lowest < REACH_SEARCH_SEGMENTS)


def check_time_reached(
    archive: WalArchive,
    snapshot: Snapshot,
    target: RecoveryTarget,
    reach: ArchiveReach,
    last: str,
) -> None:
    """Recovery to a time stops before the first commit or abort stamped later than the
    target; without one it fails after replaying everything. Refuse such a target now,
    before anything is written, naming the newest moment the archive reaches."""
    if not reach.known:
        _check_time_archived(archive, snapshot, target, last)
        return
    if reach.newest is not None and target.moment < reach.newest.time:
        return
    newer_wal = (
        "if the server has committed since, archive its WAL first (`SELECT pg_switch_wal()` "
        "there) and retry"
    )
    if reach.newest is None:
        raise WalMissing(
            f"target time {target.value} cannot be reached: the archived WAL of "
            f"{snapshot.source} holds no transaction committed after backup "
            f"{snapshot.short_id} became consistent ({PhysicalFacts.of(snapshot).stop_time}); "
            f"nothing was restored. Recover with --recovery-target latest, or {newer_wal}"
        )
    when = reach.newest.time.isoformat(sep=" ")
    raise WalMissing(
        f"target time {target.value} is not before the newest moment the archived WAL of "
        f"{snapshot.source} reaches, {when} (its last transaction, in {reach.segment}); "
        "nothing was restored. Give an earlier --target-time, or recover everything archived "
        f"with --recovery-target latest; {newer_wal}"
    )


def _check_time_archived(
    archive: WalArchive, snapshot: Snapshot, target: RecoveryTarget, last: str
) -> None:
    """Recovery to a time stops at the first commit after it, so the archive must hold WAL
    written after that time. Every record in a segment was written before the segment was
    archived: a target later than the newest segment's arrival (plus a margin for clock skew
    between the server and the store) can never be reached."""
    stored = archive.archived_at(last)
    if stored is None:
        return
    arrived = datetime.fromtimestamp(stored, UTC)
    if target.moment <= arrived + timedelta(seconds=CLOCK_SKEW_MARGIN_S):
        return
    raise WalMissing(
        f"target time {target.value} is after the newest archived WAL of {snapshot.source} "
        f"({last}, archived {arrived.isoformat(sep=' ', timespec='seconds')}); nothing was "
        "restored. The WAL up to that time is still on the server: archive it with "
        "`SELECT pg_switch_wal()` (or set archive_timeout) and retry, or recover with "
        "--recovery-target latest"
    )
