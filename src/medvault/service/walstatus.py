"""wal-status as an operation: the archiver's health (pg_stat_archiver, asked of the server)
and the archive's segments per timeline, with any gaps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medvault.errors import SourceUnavailable
from medvault.postgres.lsn import DEFAULT_SEGMENT_SIZE, is_archivable
from medvault.service.wal import open_archive, wal_settings

if TYPE_CHECKING:
    from medvault.repository.wal import WalArchive
    from medvault.service.session import Session
    from medvault.sources.postgres.walstatus import TimelineSummary


@dataclass(frozen=True)
class WalStatusReport:
    source: str
    system_identifier: str | None
    segment_size: int
    archiver: dict[str, Any] | None  # pg_stat_archiver and archive_mode, when asked
    archiver_error: str | None  # why the server could not be asked
    ready: int | None  # files marked ready to archive in pg_wal
    spooled: int | None  # pushed ahead, awaiting acknowledgement
    timelines: tuple[TimelineSummary, ...]
    problems: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        return not self.problems


def wal_status(session: Session, source: str) -> WalStatusReport:
    """The archiver's health and the archive's segments per timeline, with any gaps."""
    from medvault.sources.postgres.walspool import SPOOL_DIR_NAME, Spool
    from medvault.sources.postgres.walstatus import archiver_stats, ready_count, summarize

    with session.run("wal-status", source=source) as run:
        wal = wal_settings(session, source)
        run.repository = wal.url
        archive = open_archive(session, wal)
        record = archive.cluster()
        segment_size = record.segment_size if record else DEFAULT_SEGMENT_SIZE
        timelines = tuple(summarize(archive, segment_size))
        archiver, archiver_error = None, None
        if wal.dsn:
            try:
                archiver = archiver_stats(wal.dsn)
            except SourceUnavailable as exc:
                archiver_error = str(exc)
        spool_path = wal.wal_spool or (
            os.path.join(wal.pgdata, "pg_wal", SPOOL_DIR_NAME) if wal.pgdata else None
        )
        problems = _problems(source, archive, timelines, archiver, archiver_error)
        run.details["problems"] = len(problems)
        return WalStatusReport(
            source=source,
            system_identifier=record.system_identifier if record else None,
            segment_size=segment_size,
            archiver=archiver,
            archiver_error=archiver_error,
            ready=ready_count(wal.pgdata),
            spooled=len(Spool(spool_path, source, wal.url).markers()) if spool_path else None,
            timelines=timelines,
            problems=tuple(problems),
        )


def _problems(
    source: str,
    archive: WalArchive,
    timelines: tuple[TimelineSummary, ...],
    archiver: dict[str, Any] | None,
    archiver_error: str | None,
) -> list[str]:
    problems = []
    for t in timelines:
        if t.missing:
            shown = ", ".join(t.missing[:5]) + (" ..." if len(t.missing) > 5 else "")
            problems.append(f"timeline {t.timeline}: {len(t.missing)} missing: {shown}")
    if archiver is not None and archiver["failing"]:
        problems.append(
            f"the archiver is failing: {archiver['last_failed_wal']} failed at "
            f"{archiver['last_failed_time']}; see the server log for wal-push's message"
        )
    last = archiver["last_archived_wal"] if archiver is not None else None
    if last is not None and is_archivable(last) and not archive.exists(last):
        problems.append(
            f"the server reports {last} archived but the archive of source {source} lacks it: "
            "does its archive_command name another source or repository?"
        )
    if archiver is not None and archiver["archive_mode"] == "off":
        problems.append("archive_mode is off: no WAL reaches the archive")
    if archiver_error is not None:
        problems.append(archiver_error)
    return problems
