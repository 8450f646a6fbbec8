"""Talking to a PostgreSQL server: connections with clear errors, facts about the cluster,
and the client programs (pg_dump, pg_restore, pg_basebackup, pg_ctl) matching its version."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvault.errors import ConfigError, SourceUnavailable

if TYPE_CHECKING:
    import psycopg


def describe_dsn(dsn: str) -> str:
    """host:port/dbname as user, for messages: never the password, whatever the DSN holds."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "the configured server"
    host = parts.get("host") or os.environ.get("PGHOST") or "localhost"
    port = parts.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = parts.get("dbname") or os.environ.get("PGDATABASE") or "postgres"
    user = parts.get("user") or os.environ.get("PGUSER") or ""
    return f"{host}:{port}/{dbname}" + (f" as {user}" if user else "")


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    lowered = str(exc).lower()
    if "password authentication failed" in lowered:
        return "password authentication failed (check PGPASSWORD, PGPASSFILE or ~/.pgpass)"
    if "no password supplied" in lowered:
        return "the server wants a password (set PGPASSWORD, PGPASSFILE or ~/.pgpass)"
    if "connection refused" in lowered or "no such file or directory" in lowered:
        return "connection refused: is the server running and listening there?"
    # libpq wraps the server's words: 'connection to server at "h", port p failed: FATAL:  x'
    return text.rpartition("FATAL:")[2].strip() if "FATAL:" in text else text


def connect(
    dsn: str, *, dbname: str | None = None, autocommit: bool = True, what: str = "PostgreSQL"
) -> psycopg.Connection[Any]:
    """A connection, or SourceUnavailable naming the server and the reason in one line."""
    import psycopg

    kwargs: dict[str, Any] = {"autocommit": autocommit, "connect_timeout": 10}
    if dbname is not None:
        kwargs["dbname"] = dbname
    kwargs.setdefault("application_name", "medvault")
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        where = describe_dsn(dsn) if dbname is None else describe_dsn(f"{dsn} dbname={dbname}")
        raise SourceUnavailable(f"cannot connect to {what} at {where}: {_reason(exc)}") from None


@dataclass(frozen=True)
class ServerFacts:
    version_num: int
    version: str
    system_identifier: str
    timeline: int
    data_checksums: bool
    archive_mode: str
    archive_command: str
    wal_segment_size: int
    data_directory: str
    in_recovery: bool

    @property
    def major(self) -> int:
        return self.version_num // 10000


def server_facts(conn: psycopg.Connection[Any]) -> ServerFacts:
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version'),"
        " (SELECT system_identifier::text FROM pg_control_system()),"
        " (SELECT timeline_id FROM pg_control_checkpoint()),"
        " current_setting('data_checksums') = 'on',"
        " current_setting('archive_mode'), current_setting('archive_command'),"
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
        " current_setting('data_directory'), pg_is_in_recovery()"
    ).fetchone()
    assert row is not None
    seg = row[7]
    return ServerFacts(
        version_num=row[0],
        version=row[1],
        system_identifier=row[2],
        timeline=int(row[3]),
        data_checksums=bool(row[4]),
        archive_mode=row[5],
        archive_command=row[6],
        wal_segment_size=int(seg),
        data_directory=row[8],
        in_recovery=bool(row[9]),
    )


def find_program(name: str, pg_bin: str | None = None, major: int | None = None) -> str:
    """A PostgreSQL client program: from pg_bin when configured, else the one matching the
    server's major version (a pg_dump older than the server refuses to run), else PATH."""
    if pg_bin:
        candidate = Path(pg_bin) / name
        if not os.access(candidate, os.X_OK):
            raise ConfigError(f"pg_bin: {candidate} is not an executable program")
        return str(candidate)
    majors = [str(major)] if major else []
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        installed = [p.name for p in base.iterdir() if p.name.isdigit()]
        majors += sorted(installed, key=int, reverse=True)
    for candidate_major in majors:
        candidate = base / candidate_major / "bin" / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SourceUnavailable(
            f"{name} is not installed; install PostgreSQL's client programs or set pg_bin"
        )
    return found
