"""Physical backups of a PostgreSQL cluster: what the two methods share.

The local method (physical_local.py) walks the data directory between pg_backup_start and
pg_backup_stop; the streamed one (physical_stream.py) reads pg_basebackup's tar stream. Both
lay the snapshot's tree out by role (`pgdata/` holds the data directory, `tablespaces/OID/`
each tablespace's directory) and keep backup_label and tablespace_map, which PostgreSQL hands
over only at the end, in the snapshot's facts for the restore to write. A backup counts only
once the WAL from its start to its stop LSN is in the archive: before that it cannot be made
consistent, so no snapshot is written until the archive holds that WAL (bounded wait).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medvault.errors import IntegrityError, SourceUnavailable, WalMissing
from medvault.postgres.facts import ChecksumFailure, PhysicalFacts
from medvault.postgres.lsn import segment_timeline
from medvault.postgres.server import connect, server_errors
from medvault.sources.files import BackupResult

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.repository.wal import WalArchive


@dataclass(frozen=True)
class PhysicalSource:
    """What a physical backup reads of a PostgreSQL source's settings. The service builds
    it from medvault.toml; sources know nothing of the configuration file."""

    dsn: str
    pgdata: str | None = None  # the data directory: needed by the local method only
    pg_bin: str | None = None  # directory of pg_basebackup & co; default: matches the server
    checkpoint: str = "fast"  # "fast" or "spread": how pg_backup_start's checkpoint runs
    tier: str | None = None
    archive_timeout_s: int = 300  # bounded wait for the WAL a backup needs


@dataclass
class PhysicalResult:
    files: BackupResult
    facts: PhysicalFacts
    checksum_failures: list[ChecksumFailure] = field(default_factory=list)


def of_cluster(system_identifier: str) -> Callable[[Snapshot], bool]:
    """Which physical snapshots may be an incremental backup's parent: this cluster's."""

    def accept(snapshot: Snapshot) -> bool:
        try:
            return PhysicalFacts.of(snapshot).system_identifier == system_identifier
        except IntegrityError:
            return False  # never a parent; restoring it says what is wrong

    return accept


# -- the WAL a backup needs --------------------------------------------------------------


def wait_for_segments(archive: WalArchive, names: list[str], timeout_s: float) -> list[str]:
    """Poll until every name is archived or the time is up; the names still missing."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        timelines = {segment_timeline(n) for n in names}
        present = {n for t in timelines for n in archive.names(t)}
        missing = [n for n in names if n not in present]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 2.0)


def require_archived(
    repo: Repository, source: str, settings: PhysicalSource, needed: list[str]
) -> None:
    """Wait until the archive holds the WAL the backup needs; WalMissing (and no snapshot)
    when it does not arrive in time."""
    from medvault.repository.wal import WalArchive

    missing = wait_for_segments(WalArchive(repo, source), needed, float(settings.archive_timeout_s))
    if missing:
        raise WalMissing(
            f"backup not saved: WAL {', '.join(missing[:3])}"
            f"{' …' if len(missing) > 3 else ''} did not reach the archive within "
            f"{settings.archive_timeout_s} s; check archive_command and "
            f"`medvault wal-status {source}`"
        )


# -- damaged pages -----------------------------------------------------------------------


def describe_failures(
    dsn: str, bad: list[tuple[str, list[int]]], pgdata: str, tablespaces: dict[str, str]
) -> list[ChecksumFailure]:
    """Name each damaged file's relation (schema.table) so a DBA knows what to repair."""
    if not bad:
        return []
    out = []
    for path, blocks in bad:
        rel = path
        tablespace = 0
        if path.startswith(pgdata + "/"):
            rel = path[len(pgdata) + 1 :]
        for oid, location in tablespaces.items():
            if path.startswith(location + "/"):
                rel = f"pg_tblspc/{oid}/{path[len(location) + 1 :]}"
                tablespace = int(oid)
        out.append(ChecksumFailure(rel, relation_name(dsn, rel, tablespace), tuple(blocks)))
    return out


def relation_name(dsn: str, rel: str, tablespace: int) -> str:
    parts = rel.split("/")
    filenode = re.match(r"^(\d+)", parts[-1])
    if filenode is None:
        return "?"
    try:
        if parts[0] == "global":
            with connect(dsn) as conn, server_errors("naming a relation"):
                row = conn.execute(
                    "SELECT pg_filenode_relation(1664, %s)::text", (int(filenode.group(1)),)
                ).fetchone()
            return str(row[0]) if row and row[0] else f"global/{filenode.group(1)}"
        dboid = int(parts[-2])
        with connect(dsn) as conn, server_errors("naming a relation"):
            found = conn.execute(
                "SELECT datname FROM pg_database WHERE oid = %s", (dboid,)
            ).fetchone()
        if found is None:
            return f"relfilenode {filenode.group(1)} in database oid {dboid}"
        with connect(dsn, dbname=str(found[0])) as conn, server_errors("naming a relation"):
            row = conn.execute(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.oid = pg_filenode_relation(%s, %s)",
                (tablespace, int(filenode.group(1))),
            ).fetchone()
        name = str(row[0]) if row and row[0] else f"relfilenode {filenode.group(1)}"
        return f"{name} in database {found[0]}"
    except SourceUnavailable:
        return f"relfilenode {filenode.group(1)}"
