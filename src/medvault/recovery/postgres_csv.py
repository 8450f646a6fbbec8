"""Restore a CSV export (sources/postgres/csv_export.py): its tables loaded with COPY FROM
into a database, or its files written into a directory.

Into a database, all chosen tables load in one transaction: a table that exists receives
the rows (refused when it holds rows already, unless appending); a table that does not is
created first, with the recorded columns and types (and its schema, when missing), without
keys, constraints or defaults, which a CSV does not carry. The values are read under the
session settings they were written under; COPY's row count must equal the recorded one,
else nothing is kept. On PostgreSQL 15 and later the header is checked against the columns
(HEADER MATCH).

Into a directory, each file is created (mode 0600; an existing file is refused before
anything is written) and written whole, or removed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medvault.errors import IntegrityError, RestoreTargetError, SnapshotNotFound
from medvault.postgres.facts import CSV_SESSION_SETTINGS, CsvFacts, CsvTable
from medvault.postgres.server import connect, server_errors
from medvault.recovery.stream import iter_file
from medvault.repository.records import FILE, Node, check_name

if TYPE_CHECKING:
    import psycopg

    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository


@dataclass(frozen=True)
class TableLoaded:
    key: str  # schema.table
    rows: int
    created: bool  # the table did not exist and was created from the recorded columns


@dataclass
class CsvRestoreResult:
    database: str | None  # loaded into this database, or
    directory: str | None  # written into this directory
    tables: tuple[TableLoaded, ...]
    files: tuple[str, ...]  # written (directory)
    bytes_read: int
    duration: float


def chosen_exports(snapshot: Snapshot, wanted: tuple[str, ...]) -> list[CsvTable]:
    """The exports `wanted` names ('name' in any schema, or 'schema.name'); none: all.
    A name the snapshot does not hold is an error."""
    exports = CsvFacts.of(snapshot).exports

    def matches(export: CsvTable, name: str) -> bool:
        return export.key == name if "." in name else export.table == name

    for name in wanted:
        if not any(matches(e, name) or e.key == name for e in exports):
            held = ", ".join(e.key for e in exports)
            raise SnapshotNotFound(
                f"table {name} is not in CSV snapshot {snapshot.short_id} (it holds {held})"
            )
    if not wanted:
        return list(exports)
    return [e for e in exports if any(matches(e, n) or e.key == n for n in wanted)]


def _files(repo: Repository, snapshot: Snapshot, exports: list[CsvTable]) -> dict[str, Node]:
    nodes = {n.name: n for n in repo.load_tree(snapshot.tree)}
    found: dict[str, Node] = {}
    for export in exports:
        name = export.file.encode()
        check_name(name)
        node = nodes.get(name)
        if node is None or node.type != FILE:
            raise IntegrityError(
                f"snapshot {snapshot.short_id} lacks the file {export.file} of table {export.key}"
            )
        found[export.key] = node
    return found


def _relation_exists(conn: psycopg.Connection[Any], export: CsvTable) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (export.schema, export.table),
    ).fetchone()
    return row is not None


def _has_rows(conn: psycopg.Connection[Any], export: CsvTable) -> bool:
    from psycopg import sql

    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
        sql.Identifier(export.schema, export.table)
    )
    row = conn.execute(query).fetchone()
    return bool(row and row[0])


def _create_table(conn: psycopg.Connection[Any], export: CsvTable, database: str) -> None:
    """CREATE TABLE from the recorded columns. A type is SQL text from the snapshot: each
    must parse as one type name the target knows (to_regtype) before it goes into DDL."""
    from psycopg import sql

    for column in export.columns:
        conn.execute("SAVEPOINT medvault_type")
        try:
            row = conn.execute("SELECT to_regtype(%s)", (column.type,)).fetchone()
            known = row is not None and row[0] is not None
            conn.execute("RELEASE SAVEPOINT medvault_type")
        except Exception:
            conn.execute("ROLLBACK TO SAVEPOINT medvault_type")
            known = False
        if not known:
            raise RestoreTargetError(
                f"cannot create table {export.key}: type {column.type} of column "
                f"{column.name} does not exist in database {database}; create the table "
                "(or the type) and restore again"
            )
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(export.schema)))
    conn.execute(
        sql.SQL("CREATE TABLE {} ({})").format(
            sql.Identifier(export.schema, export.table),
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
                for c in export.columns
            ),
        )
    )


def _copy_in(
    conn: psycopg.Connection[Any],
    repo: Repository,
    snapshot: Snapshot,
    export: CsvTable,
    node: Node,
    header: str,
    on_progress: Callable[[int], None] | None,
) -> tuple[int, int]:
    """COPY the file into its table: (rows, bytes)."""
    from psycopg import sql

    query = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER {})").format(
        sql.Identifier(export.schema, export.table),
        sql.SQL(", ").join(sql.Identifier(c.name) for c in export.columns),
        sql.SQL(header),
    )
    fed = 0
    cursor = conn.cursor()
    with cursor.copy(query) as copy:
        data = iter_file(repo, snapshot, node)
        try:
            for chunk in data:
                copy.write(chunk)
                fed += len(chunk)
                if on_progress is not None:
                    on_progress(len(chunk))
        finally:
            data.close()
    return cursor.rowcount, fed


def restore_csv(
    repo: Repository,
    snapshot: Snapshot,
    *,
    dsn: str,
    database: str | None = None,
    tables: tuple[str, ...] = (),
    append: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> CsvRestoreResult:
    """Load the chosen tables of a CSV snapshot into `database` (default: the DSN's) on the
    server of `dsn`, in one transaction."""
    from psycopg import sql

    started = time.monotonic()
    exports = chosen_exports(snapshot, tables)
    nodes = _files(repo, snapshot, exports)
    conn = connect(dsn, dbname=database, what="the restore target", fails_as=RestoreTargetError)
    loaded: list[TableLoaded] = []
    fed = 0
    try:
        with server_errors(
            f"CSV restore into {database or 'the DSN database'}", RestoreTargetError
        ):
            db = str(conn.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]
            major = int(conn.info.server_version) // 10000
            header = "MATCH" if major >= 15 else "true"
            with conn.transaction():
                for name, value in CSV_SESSION_SETTINGS.items():
                    conn.execute(
                        sql.SQL("SET LOCAL {} = {}").format(sql.SQL(name), sql.Literal(value))
                    )
                exists = {e.key: _relation_exists(conn, e) for e in exports}
                for export in exports:
                    if exists[export.key] and not append and _has_rows(conn, export):
                        raise RestoreTargetError(
                            f"table {export.key} in database {db} is not empty; pass --append "
                            "to add the snapshot's rows to it, or empty it first"
                        )
                for export in exports:
                    if not exists[export.key]:
                        _create_table(conn, export, db)
                    rows, size = _copy_in(
                        conn, repo, snapshot, export, nodes[export.key], header, on_progress
                    )
                    fed += size
                    if rows != export.rows:
                        raise IntegrityError(
                            f"table {export.key}: {rows} rows loaded, the snapshot recorded "
                            f"{export.rows}; nothing was kept"
                        )
                    loaded.append(TableLoaded(export.key, rows, not exists[export.key]))
    finally:
        conn.close()
    return CsvRestoreResult(
        database=db,
        directory=None,
        tables=tuple(loaded),
        files=(),
        bytes_read=fed,
        duration=time.monotonic() - started,
    )


def write_csv_files(
    repo: Repository,
    snapshot: Snapshot,
    directory: str,
    *,
    tables: tuple[str, ...] = (),
    on_progress: Callable[[int], None] | None = None,
) -> CsvRestoreResult:
    """Write the chosen tables' CSV files into `directory` (made, mode 0700, when missing);
    an existing file of the same name is refused before anything is written."""
    started = time.monotonic()
    exports = chosen_exports(snapshot, tables)
    nodes = _files(repo, snapshot, exports)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreTargetError(f"cannot use {directory}: {exc.strerror}") from None
    written: list[str] = []
    fed = 0
    try:
        for export in exports:
            with contextlib.suppress(FileNotFoundError):
                os.stat(export.file, dir_fd=dirfd, follow_symlinks=False)
                raise RestoreTargetError(
                    f"{os.path.join(directory, export.file)} exists; refusing to overwrite it"
                )
        for export in exports:
            fed += _write_file(repo, snapshot, nodes[export.key], dirfd, export, on_progress)
            written.append(os.path.join(directory, export.file))
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    rows = tuple(TableLoaded(e.key, e.rows, False) for e in exports)
    return CsvRestoreResult(None, directory, rows, tuple(written), fed, time.monotonic() - started)


def _write_file(
    repo: Repository,
    snapshot: Snapshot,
    node: Node,
    dirfd: int,
    export: CsvTable,
    on_progress: Callable[[int], None] | None,
) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(export.file, flags, 0o600, dir_fd=dirfd)
    except OSError as exc:
        raise RestoreTargetError(f"cannot create {export.file}: {exc.strerror}") from None
    written = 0
    try:
        data = iter_file(repo, snapshot, node)
        try:
            for chunk in data:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                written += len(chunk)
                if on_progress is not None:
                    on_progress(len(chunk))
        finally:
            data.close()
        os.fsync(fd)
    except BaseException as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(export.file, dir_fd=dirfd)
        if isinstance(exc, OSError):
            raise RestoreTargetError(f"cannot write {export.file}: {exc.strerror}") from None
        raise
    os.close(fd)
    return written
