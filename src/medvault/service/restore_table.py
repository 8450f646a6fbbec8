"""restore-table: one table as it was at a moment, while the rest of the database keeps
running.

The base backup able to reach the moment is chosen as `pitr` chooses it; it is recovered to
that moment in scratch space by a throwaway server on a private socket, exactly as a physical
drill recovers one (verification/scratch_cluster.py); the table's columns are read there and
a new table of that shape is created in the production database under a new name, its rows
streamed from the copy (COPY TO into COPY FROM, nothing on disk); or the rows are written to
a file (CSV, or pg_dump's custom format). The scratch cluster is stopped and removed however
the run ends. What the new table keeps of the old one: recovery/postgres/table_copy.py.

Everything that can be refused cheaply (the names, an existing table or file, a moment no
backup reaches) is refused before anything is restored.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medvault.errors import MedvaultError, RecoveryFailed, UsageError
from medvault.service.restore import note_reason

if TYPE_CHECKING:
    from medvault.config import PostgresSourceSettings
    from medvault.recovery.postgres.table_copy import TableDefinition, TableName
    from medvault.service.session import Session
    from medvault.verification.scratch_cluster import ScratchCluster

FILE_FORMATS = ("csv", "custom")


@dataclass(frozen=True)
class RestoreTableOptions:
    source: str  # a PostgreSQL source from medvault.toml
    table: str  # SCHEMA.TABLE as SQL spells it ("Quoted"."Names" kept as written)
    as_of: str  # the moment, ISO-8601 (without a zone: this host's local time)
    into: str | None = None  # SCHEMA.NEW_TABLE in the production database
    database: str | None = None  # default: the source dsn's database
    to_file: str | None = None  # instead of --into: write the table here
    file_format: str | None = None  # csv (default) or custom; only with to_file
    scratch: str | None = None  # default: [drill] scratch, else the temporary directory
    reason: str | None = None


@dataclass(frozen=True)
class RestoreTableResult:
    source: str
    table: str  # as SQL spells it
    database: str
    snapshot_id: str
    short_id: str
    as_of: str  # the target, normalised to UTC
    reached_time: str | None  # the last transaction the copy replayed
    reached_lsn: str | None
    into: str | None  # the new table, or None when written to a file
    file: str | None
    file_format: str | None
    rows: int
    bytes: int  # streamed into the table, or written to the file
    columns: tuple[str, ...]
    left_out_defaults: tuple[str, ...]  # columns whose default used a sequence or function
    recovery_s: float  # restore of the base backup and replay to the moment
    copy_s: float
    duration: float


def restore_table(
    session: Session,
    options: RestoreTableOptions,
    *,
    on_chosen: Callable[[str, str], None] | None = None,
) -> RestoreTableResult:
    """Recover a copy of the source's cluster to `as_of` in scratch space, and copy one table
    out of it into a new table (or a file). `on_chosen(short_id, consistent_at)` is told the
    base backup before the restore starts."""
    from medvault.postgres.facts import PhysicalFacts
    from medvault.postgres.server import dsn_field
    from medvault.recovery.postgres import choose_base_backup, make_target
    from medvault.recovery.postgres.table_copy import parse_table_name
    from medvault.verification.scratch_cluster import ScratchCluster

    began = time.monotonic()
    with session.run("restore-table", source=options.source) as run:
        note_reason(run, options.reason)
        fmt = _check(options)
        table = parse_table_name(options.table)
        into = parse_table_name(options.into) if options.into is not None else None
        with _as_of_spelling():
            target = make_target(time_=options.as_of)
        settings = _postgres_source(session, options.source)
        database = options.database or dsn_field(settings.dsn, "dbname") or "postgres"
        run.details.update(table=str(table), database=database, as_of=target.value)
        run.recovery_point = f"time {target.value}"
        if into is not None:
            run.details["into"] = str(into)
            run.destination = f"table {into} in database {database}"
            _refuse_taken_name(settings.dsn, database, into)
        fd = None
        if options.to_file is not None:
            from medvault.recovery.postgres.table_copy import new_file

            run.details.update(file=options.to_file, format=fmt)
            run.destination = options.to_file
            fd = new_file(options.to_file)
        try:
            repo = session.open(options.source)
            run.repository = repo.url
            with _as_of_spelling():
                snap = choose_base_backup(repo, options.source, target)
            run.touched(snap.id)
            if on_chosen is not None:
                on_chosen(snap.short_id, PhysicalFacts.of(snap).stop_time)
            cluster = ScratchCluster(
                repo,
                snap,
                options.scratch or session.settings.drill.scratch,
                target=target,
                pg_bin=settings.pg_bin,
                dsn_user=dsn_field(settings.dsn, "user"),
                purpose="restore-table",
            )
            try:
                with _as_of_spelling():
                    cluster.restore()
                reached = cluster.recover()
                recovered = time.monotonic()
                run.recovery_point = (
                    f"{reached.time or 'no transaction replayed'} (last transaction replayed; "
                    f"target {target.value}, LSN {reached.lsn})"
                )
                run.details["reached"] = {"time": reached.time, "lsn": reached.lsn}
                rows, moved, definition = _copy_out(
                    cluster, settings, database, table, into, fd, fmt, f"at {target.value}"
                )
            finally:
                problem = cluster.close()
                if problem is not None:
                    note = f"the scratch copy in {cluster.scratch} is left: {problem}"
                    session.notes.append(f"{note}; remove it by hand")
                    run.details["cleanup"] = problem
        except BaseException:
            if fd is not None and options.to_file is not None:
                _discard(fd, options.to_file)
                fd = None
            raise
        if fd is not None:
            os.fsync(fd)  # the file is what the caller keeps: on disk before we say so
            os.close(fd)
        done = time.monotonic()
        run.add_bytes(restored=moved)
        run.details.update(rows=rows, columns=len(definition.columns))
        if definition.left_out_defaults:
            run.details["left_out_defaults"] = list(definition.left_out_defaults)
        return RestoreTableResult(
            source=options.source,
            table=str(table),
            database=database,
            snapshot_id=snap.id,
            short_id=snap.short_id,
            as_of=target.value,
            reached_time=reached.time,
            reached_lsn=reached.lsn,
            into=str(into) if into is not None else None,
            file=options.to_file,
            file_format=fmt if options.to_file is not None else None,
            rows=rows,
            bytes=moved,
            columns=tuple(c.name for c in definition.columns),
            left_out_defaults=definition.left_out_defaults,
            recovery_s=round(recovered - began, 3),
            copy_s=round(done - recovered, 3),
            duration=round(done - began, 3),
        )


@contextlib.contextmanager
def _as_of_spelling() -> Iterator[None]:
    """The recovery code's refusals name pitr's --target-time; here the option is --as-of."""
    try:
        yield
    except MedvaultError as exc:
        text = str(exc)
        if "--target-time" not in text:
            raise
        raise type(exc)(text.replace("--target-time", "--as-of")) from None


def _check(options: RestoreTableOptions) -> str:
    if (options.into is None) == (options.to_file is None):
        raise UsageError("give --into SCHEMA.NEW_TABLE or --to-file PATH (one of them)")
    if options.file_format is not None and options.to_file is None:
        raise UsageError("--format applies to --to-file only")
    fmt = options.file_format or "csv"
    if fmt not in FILE_FORMATS:
        raise UsageError(f"--format is {' or '.join(FILE_FORMATS)}")
    return fmt


def _postgres_source(session: Session, source: str) -> PostgresSourceSettings:
    from medvault.config import PostgresSourceSettings

    settings = session.settings.source.get(source) if session.configured_sources() else None
    if not isinstance(settings, PostgresSourceSettings):
        raise UsageError(
            f"restore-table needs a PostgreSQL source from medvault.toml; {source!r} is not one"
        )
    return settings


def _refuse_taken_name(dsn: str, database: str, into: TableName) -> None:
    from medvault.errors import RestoreTargetError
    from medvault.postgres.server import connect, server_errors
    from medvault.recovery.postgres.table_copy import check_new_table

    with (
        connect(
            dsn, dbname=database, what="the target database", fails_as=RestoreTargetError
        ) as conn,
        server_errors(f"database {database}", RestoreTargetError),
    ):
        check_new_table(conn, into, database)


def _copy_out(
    cluster: ScratchCluster,
    settings: PostgresSourceSettings,
    database: str,
    table: TableName,
    into: TableName | None,
    fd: int | None,
    fmt: str,
    when: str,
) -> tuple[int, int, TableDefinition]:
    """Read the table's definition in the recovered copy, then copy its rows: (rows, bytes,
    definition)."""
    from medvault.errors import RestoreTargetError
    from medvault.postgres.server import connect, server_errors
    from medvault.recovery.postgres.table_copy import copy_table, read_definition, write_csv

    access = cluster.access
    assert access is not None
    moved = [0]

    def count(n: int) -> None:
        moved[0] += n

    with (
        access.connect(cluster.port, dbname=database) as copy,
        server_errors("the recovered copy", RecoveryFailed),
    ):
        definition = read_definition(copy, table, when)
        if into is not None:
            with (
                connect(
                    settings.dsn,
                    dbname=database,
                    what="the target database",
                    fails_as=RestoreTargetError,
                ) as target,
                server_errors(f"copying into {into} in database {database}", RestoreTargetError),
            ):
                rows = copy_table(copy, target, definition, into, count)
            return rows, moved[0], definition
        assert fd is not None
        if fmt == "csv":
            rows = write_csv(copy, definition, fd)
        else:
            rows = _dump_custom(cluster, copy, database, table, fd)
        return rows, os.fstat(fd).st_size, definition


def _dump_custom(
    cluster: ScratchCluster, copy: Any, database: str, table: TableName, fd: int
) -> int:
    from medvault.postgres.programs import find_program
    from medvault.recovery.postgres.table_copy import dump_custom

    assert cluster.access is not None
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    row = copy.execute(sql.SQL("SELECT count(*) FROM {}").format(table.identifier())).fetchone()
    user = cluster.access.users[0] if cluster.access.users else None
    conninfo = make_conninfo(
        "", host=cluster.socket_dir, port=cluster.port, dbname=database, user=user
    )
    pg_dump = find_program("pg_dump", cluster.pg_bin, cluster.facts.major)
    dump_custom(pg_dump, conninfo, table, fd)
    return int(row[0])


def _discard(fd: int, path: str) -> None:
    """A file left half-written by a failed or interrupted run holds patient data: removed."""
    from medvault.recovery.postgres.table_copy import remove_partial

    os.close(fd)
    remove_partial(path)
