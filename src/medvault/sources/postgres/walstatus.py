"""The health of a source's WAL archive (`wal-status`): per timeline the segments held and the
gaps between them, the server's archiver statistics, and the backlog in pg_wal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medvault.postgres.lsn import (
    BACKUP_LABEL,
    PARTIAL,
    SEGMENT,
    numbered_segment_name,
    segment_number,
    segment_timeline,
)
from medvault.postgres.timelines import history_name

if TYPE_CHECKING:
    from medvault.repository.wal import WalArchive


@dataclass
class TimelineSummary:
    timeline: int
    first: str | None
    last: str | None
    count: int
    missing: list[str]
    history: bool
    partial: list[str]
    backup_labels: int


def summarize(archive: WalArchive, segment_size: int) -> list[TimelineSummary]:
    """Per timeline: first, last and count of segments, and the gaps between them."""
    names = archive.names()
    timelines = sorted({segment_timeline(n) for n in names})
    summaries = []
    for tli in timelines:
        mine = [n for n in names if segment_timeline(n) == tli]
        segnos = sorted(segment_number(n, segment_size) for n in mine if SEGMENT.match(n))
        present = set(segnos)
        missing = (
            [
                numbered_segment_name(tli, s, segment_size)
                for s in range(segnos[0], segnos[-1] + 1)
                if s not in present
            ]
            if segnos
            else []
        )
        has_history = history_name(tli) in mine
        if tli > 1 and segnos and not has_history:
            missing.insert(0, history_name(tli))
        summaries.append(
            TimelineSummary(
                timeline=tli,
                first=numbered_segment_name(tli, segnos[0], segment_size) if segnos else None,
                last=numbered_segment_name(tli, segnos[-1], segment_size) if segnos else None,
                count=len(segnos),
                missing=missing,
                history=has_history,
                partial=[n for n in mine if PARTIAL.match(n)],
                backup_labels=sum(1 for n in mine if BACKUP_LABEL.match(n)),
            )
        )
    return summaries


ARCHIVER_COLUMNS = (
    "archived_count",
    "last_archived_wal",
    "last_archived_time",
    "failed_count",
    "last_failed_wal",
    "last_failed_time",
)


def archiver_stats(dsn: str, timeout: int = 10) -> dict[str, Any]:
    """pg_stat_archiver, plus whether the archiver is failing now (its last attempt failed).
    `timeout`: seconds to wait for the connection."""
    from medvault.postgres.server import connect, describe_dsn, server_errors

    with connect(dsn, timeout=timeout) as conn, server_errors(f"PostgreSQL at {describe_dsn(dsn)}"):
        row = conn.execute(f"SELECT {', '.join(ARCHIVER_COLUMNS)} FROM pg_stat_archiver").fetchone()
        mode = conn.execute("SELECT current_setting('archive_mode')").fetchone()
    assert row is not None and mode is not None
    stats = dict(zip(ARCHIVER_COLUMNS, row, strict=True))
    failed, archived = stats["last_failed_time"], stats["last_archived_time"]
    stats["archive_mode"] = mode[0]
    stats["failing"] = failed is not None and (archived is None or failed > archived)
    return stats


def ready_count(pgdata: str | None) -> int | None:
    """The archiver's backlog when the data directory is on this host and readable."""
    if not pgdata:
        return None
    try:
        entries = os.listdir(os.path.join(pgdata, "pg_wal", "archive_status"))
    except OSError:
        return None
    return sum(1 for e in entries if e.endswith(".ready"))
