"""One table of a logical snapshot restored under a new name (`restore SNAP --table T --into
NEW`), without touching the table of that name in the target database.

pg_restore cannot rename what it restores, so the table is restored (and its row count
proved) into a scratch database on the same server, then copied into the target under the
new name exactly as restore-table copies one out of a recovered cluster
(recovery/postgres/table_copy.py: the columns with their types, not its constraints,
indexes or triggers). The scratch database is dropped however the restore ends; it is named
as a logical drill's (`medvault_drill_…`), so one a killed restore leaves behind is dropped by
the next logical drill from this host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault.errors import RecoveryFailed, RestoreTargetError, first_line
from medvault.postgres.server import connect, server_errors
from medvault.recovery.postgres.table_copy import (
    TableDefinition,
    TableName,
    check_new_table,
    copy_table,
    read_definition,
)
from medvault.recovery.postgres_logical import restore_logical

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository


@dataclass(frozen=True)
class LogicalTableResult:
    table: str  # schema.name as recorded in the snapshot
    into: TableName
    rows: int
    bytes_read: int
    definition: TableDefinition
    duration: float


def restore_table_into(
    repo: Repository,
    snapshot: Snapshot,
    *,
    dsn: str,
    database: str,
    table: str,
    into: TableName,
    scratch_database: str,
    pg_bin: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> LogicalTableResult:
    """Restore `table` of the snapshot as `into` in `database` (which must not hold it)."""
    started = time.monotonic()
    with (
        connect(
            dsn, dbname=database, what="the restore target", fails_as=RestoreTargetError
        ) as conn,
        server_errors(f"database {database}", RestoreTargetError),
    ):
        check_new_table(conn, into, database)
    try:
        restored = restore_logical(
            repo,
            snapshot,
            dsn=dsn,
            database=scratch_database,
            tables=(table,),
            pg_bin=pg_bin,
            on_progress=on_progress,
        )
        if len(restored.row_counts) != 1:
            raise RestoreTargetError(
                f"--table {table} names {len(restored.row_counts)} tables in snapshot "
                f"{snapshot.short_id} ({', '.join(sorted(restored.row_counts))}); give it as "
                "SCHEMA.TABLE"
            )
        key = next(iter(restored.row_counts))
        schema, _, name = key.partition(".")
        with (
            connect(dsn, dbname=scratch_database, what="the scratch database") as source,
            connect(dsn, dbname=database, what="the restore target") as target,
            server_errors(f"copying {key} into {into}", RestoreTargetError),
        ):
            definition = read_definition(
                source, TableName(schema, name), f"in snapshot {snapshot.short_id}"
            )
            rows = copy_table(source, target, definition, into)
    except BaseException:
        _drop(dsn, scratch_database, table, quiet=True)
        raise
    _drop(dsn, scratch_database, table, quiet=False)
    return LogicalTableResult(
        table=key,
        into=into,
        rows=rows,
        bytes_read=restored.bytes_read,
        definition=definition,
        duration=time.monotonic() - started,
    )


def _drop(dsn: str, scratch_database: str, table: str, *, quiet: bool) -> None:
    """Drop the scratch database (it holds a copy of patient data); an error unless `quiet`
    (another error is on its way already)."""
    from psycopg import sql

    try:
        with (
            connect(dsn, what="the restore target's server") as maintenance,
            server_errors("dropping the scratch database", RecoveryFailed),
        ):
            maintenance.execute(
                sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(scratch_database))
            )
    except RecoveryFailed as exc:
        if not quiet:
            raise RecoveryFailed(
                f"the scratch database {scratch_database} holding a copy of {table} could not "
                f"be dropped: {first_line(exc)}; drop it by hand"
            ) from None
