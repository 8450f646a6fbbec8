"""Talking to a PostgreSQL server: one `connect`, queries whose failures are medvault's
errors, and facts about the cluster.

Every error the server answers with becomes a one-line medvault error carrying the server's
own words, never a traceback: the caller says which error (`fails_as`): SourceUnavailable
where medvault reads from a server it backs up (the default), RecoveryFailed where it
checks a copy it restored. psycopg is imported only when a connection is made.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medvault.errors import MedvaultError, SourceUnavailable, first_line

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


def dsn_field(dsn: str | None, key: str) -> str | None:
    """One connection parameter as libpq resolves it (dsn, then PG* environment)."""
    if dsn is None:
        return None
    from psycopg.conninfo import conninfo_to_dict

    value = conninfo_to_dict(dsn).get(key) or os.environ.get(f"PG{key.upper()}")
    return str(value) if value else None


def _where(dsn: str, params: dict[str, Any]) -> str:
    from psycopg.conninfo import make_conninfo

    try:
        return describe_dsn(make_conninfo(dsn, **params) if params else dsn)
    except Exception:
        return "the configured server"


def connect(
    dsn: str = "",
    *,
    dbname: str | None = None,
    autocommit: bool = True,
    what: str = "PostgreSQL",
    fails_as: type[MedvaultError] = SourceUnavailable,
    timeout: int = 10,
    application_name: str = "medvault",
    **params: Any,
) -> psycopg.Connection[Any]:
    """A connection (to `dsn`, with libpq parameters such as host, port and user added), or
    `fails_as` naming the server and the reason in one line."""
    import psycopg

    if dbname is not None:
        params["dbname"] = dbname
    try:
        return psycopg.connect(
            dsn,
            autocommit=autocommit,
            connect_timeout=timeout,
            application_name=application_name,
            **params,
        )
    except psycopg.Error as exc:
        where = _where(dsn, params)
        raise fails_as(f"cannot connect to {what} at {where}: {_reason(exc)}") from None


@contextlib.contextmanager
def server_errors(what: str, fails_as: type[MedvaultError] = SourceUnavailable) -> Iterator[None]:
    """Queries inside: an error the server answers with (a privilege refused, a statement
    cancelled, the connection lost) becomes `fails_as`: '{what}: {its first line}'."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        raise fails_as(f"{what}: {first_line(exc)}") from None


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
