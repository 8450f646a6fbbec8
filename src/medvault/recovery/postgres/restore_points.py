"""Restore points: named positions in the production server's WAL (`medvault mark`) that a
recovery can target."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC

from medvault.errors import UsageError
from medvault.recovery.postgres.target import RESTORE_POINT_MAX


@dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: str
    wal: str
    time: str


def create_restore_point(dsn: str, name: str, what: str = "PostgreSQL") -> RestorePoint:
    """pg_create_restore_point, then a WAL switch so the point reaches the archive now
    rather than when the segment fills."""
    from medvault.postgres.server import connect, server_errors

    if not name or len(name.encode()) > RESTORE_POINT_MAX:
        raise UsageError("a restore point name is 1 to 63 bytes long")
    with connect(dsn, what=what) as conn, server_errors(f"cannot create restore point {name!r}"):
        row = conn.execute(
            "SELECT lsn::text, pg_walfile_name(lsn), clock_timestamp()"
            " FROM pg_create_restore_point(%s) AS lsn",
            (name,),
        ).fetchone()
        conn.execute("SELECT pg_switch_wal()")
    assert row is not None
    return RestorePoint(name, str(row[0]), str(row[1]), row[2].astimezone(UTC).isoformat())
