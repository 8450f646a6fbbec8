"""CSV exports of named tables: one snapshot, one file per table, each file the output of
`COPY (SELECT columns FROM table) TO STDOUT WITH (FORMAT csv, HEADER)` streamed straight
into the repository (no CSV file on disk).

Consistency: every table is read in one REPEATABLE READ, READ ONLY transaction whose first
statement locks them all (ACCESS SHARE), before its snapshot is taken: the files are one
consistent cut of the database, and no TRUNCATE or table rewrite (not MVCC-safe) can slip in
between the snapshot and a table's COPY. Each table's row count is COPY's own, exact.

The text of each value depends on session settings (dates, time zones, floats, bytea): the
export fixes them (CSV_SESSION_SETTINGS) and records them, and a restore loads under the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from medvault.errors import IntegrityError
from medvault.postgres.facts import (
    CSV_SESSION_SETTINGS,
    KIND_CSV,
    CsvColumn,
    CsvFacts,
    CsvTable,
)
from medvault.postgres.patterns import Relation, matching, no_match
from medvault.postgres.server import connect, server_errors
from medvault.sources.postgres.logical import Store, database_facts
from medvault.sources.stream import (
    Finisher,
    StreamDryRun,
    StreamResult,
    backup_streams,
    dry_run_streams,
)

if TYPE_CHECKING:
    import psycopg

    from medvault.repository.chunker import ReadsInto
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository

# Relations whose rows COPY (SELECT ...) reads: tables, partitioned tables (all their
# partitions' rows), views, materialized views, foreign tables.
CSV_RELKINDS = ("r", "p", "v", "m", "f")
LOCKABLE = ("r", "p", "m")


@dataclass
class CsvExportResult:
    snapshot: Snapshot
    database: str
    exports: tuple[CsvTable, ...]
    bytes_read: int
    bytes_added: int
    duration: float

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.exports)


def csv_file_name(schema: str, table: str) -> str:
    """The snapshot's file for a table: schema.table.csv, with '%' and '/' (which a quoted
    identifier may hold, a file name may not) written %25 and %2F."""

    def safe(name: str) -> str:
        return name.replace("%", "%25").replace("/", "%2F")

    return f"{safe(schema)}.{safe(table)}.csv"


class CopyReader:
    """COPY TO STDOUT's data messages (about a row each) as a stream that fills whole
    buffers, so the chunker reads large blocks."""

    def __init__(self, data: Iterator[bytes | bytearray | memoryview]) -> None:
        self._data = data
        self._pending = memoryview(b"")

    def readinto(self, buffer: memoryview, /) -> int:
        # One slice assignment per message in the common case: a row is ~100 bytes, and
        # per-row overhead here is what an export of many rows spends its time on.
        size = len(buffer)
        filled = 0
        if self._pending:
            filled = min(size, len(self._pending))
            buffer[:filled] = self._pending[:filled]
            self._pending = self._pending[filled:]
            if filled == size:
                return filled
        for chunk in self._data:
            end = filled + len(chunk)
            if end < size:
                buffer[filled:end] = chunk
                filled = end
                continue
            take = size - filled
            whole = memoryview(chunk)
            buffer[filled:size] = whole[:take]
            self._pending = whole[take:]
            return size
        return filled


def select_relations(
    conn: psycopg.Connection[Any],
    database: str,
    tables: tuple[str, ...],
    exclude_tables: tuple[str, ...],
) -> list[Relation]:
    """The relations the patterns name, less the excluded; a pattern matching none is
    refused."""
    chosen: dict[int, Relation] = {}
    for pattern in tables:
        found = matching(conn, pattern, database, CSV_RELKINDS)
        if not found:
            raise no_match(pattern, database)
        chosen.update((r.oid, r) for r in found)
    for pattern in exclude_tables:
        found = matching(conn, pattern, database, CSV_RELKINDS)
        if not found:
            raise no_match(pattern, database, excluded=True)
        for relation in found:
            chosen.pop(relation.oid, None)
    return sorted(chosen.values(), key=lambda r: (r.schema, r.name))


def _columns(conn: psycopg.Connection[Any], oid: int) -> tuple[CsvColumn, ...]:
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (oid,),
    ).fetchall()
    return tuple(CsvColumn(r[0], r[1]) for r in rows)


def copy_out_sql(relation: Relation, columns: tuple[CsvColumn, ...]) -> psycopg.sql.Composed:
    from psycopg import sql

    # ONLY for a plain table: an inheritance child is a table of its own (as pg_dump has
    # it); a partitioned table's rows are its partitions'.
    only = sql.SQL("ONLY ") if relation.relkind == "r" else sql.SQL("")
    return sql.SQL("COPY (SELECT {} FROM {}{}.{}) TO STDOUT WITH (FORMAT csv, HEADER)").format(
        sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
        only,
        sql.Identifier(relation.schema),
        sql.Identifier(relation.name),
    )


def export_csv(
    repo: Repository | Callable[[], Repository],
    *,
    source: str,
    dsn: str,
    tables: tuple[str, ...],
    exclude_tables: tuple[str, ...] = (),
    database: str | None = None,
    tags: tuple[str, ...] = (),
    tier: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> CsvExportResult:
    """Export the tables `tables` (pg_dump -t patterns) names, less `exclude_tables`, into a
    new snapshot of kind postgres.csv. `repo` may be a function opening the repository,
    called once the tables are locked."""

    def store(
        repo: Repository, streams: Iterator[tuple[bytes, ReadsInto]], finish: Finisher
    ) -> StreamResult:
        return backup_streams(
            repo,
            streams,
            source=source,
            kind=KIND_CSV,
            facts={},
            tags=tags,
            tier=tier,
            on_progress=on_progress,
            before_save=finish,
        )

    with server_errors(f"CSV export of source {source}"):
        result, db, exported = _export(repo, dsn, tables, exclude_tables, database, store)
    return CsvExportResult(
        snapshot=result.snapshot,
        database=db,
        exports=exported,
        bytes_read=result.bytes_read,
        bytes_added=result.bytes_added,
        duration=result.duration,
    )


def dry_run_csv(
    repo: Repository | Callable[[], Repository],
    *,
    source: str,
    dsn: str,
    tables: tuple[str, ...],
    exclude_tables: tuple[str, ...] = (),
    database: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[StreamDryRun, str, tuple[CsvTable, ...]]:
    """Run the export export_csv would, chunked and counted against the repository's index:
    nothing is written. What was found, the database's name and the tables read."""

    def store(
        repo: Repository, streams: Iterator[tuple[bytes, ReadsInto]], finish: Finisher
    ) -> StreamDryRun:
        return dry_run_streams(
            repo, streams, source=source, on_progress=on_progress, before_save=finish
        )

    with server_errors(f"dry run of a CSV export of source {source}"):
        return _export(repo, dsn, tables, exclude_tables, database, store)


T = TypeVar("T")


def _export(
    repo: Repository | Callable[[], Repository],
    dsn: str,
    tables: tuple[str, ...],
    exclude_tables: tuple[str, ...],
    database: str | None,
    store: Store[T],
) -> tuple[T, str, tuple[CsvTable, ...]]:
    from psycopg import sql

    conn = connect(dsn, dbname=database)
    streams: Generator[tuple[bytes, CopyReader], None, None] | None = None
    try:
        db = str(conn.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]
        relations = select_relations(conn, db, tables, exclude_tables)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        lockable = [r for r in relations if r.relkind in LOCKABLE]
        if lockable:
            # Before anything takes the transaction's snapshot (see the module's docstring).
            conn.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                    sql.SQL(", ").join(sql.Identifier(r.schema, r.name) for r in lockable)
                )
            )
        for name, value in CSV_SESSION_SETTINGS.items():
            conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.SQL(name), sql.Literal(value)))
        conn.execute("SET LOCAL row_security = off")  # all rows, or an error: as pg_dump
        facts = database_facts(conn)
        columns = {r.oid: _columns(conn, r.oid) for r in relations}
        exported: list[CsvTable] = []
        if callable(repo):
            repo = repo()

        def produce() -> Generator[tuple[bytes, CopyReader], None, None]:
            cursor = conn.cursor()
            for relation in relations:
                file = csv_file_name(relation.schema, relation.name)
                with cursor.copy(copy_out_sql(relation, columns[relation.oid])) as copy:
                    yield file.encode(), CopyReader(iter(copy))
                exported.append(
                    CsvTable(
                        relation.schema,
                        relation.name,
                        file,
                        cursor.rowcount,
                        columns[relation.oid],
                    )
                )

        def finish() -> dict[str, Any]:
            if len(exported) != len(relations):
                raise IntegrityError("the CSV export ended before every table was read")
            return CsvFacts(
                database=facts["database"],
                server_version=facts["server_version"],
                server_version_num=facts["server_version_num"],
                snapshot_time=facts["snapshot_time"],
                system_identifier=facts["system_identifier"],
                settings=CSV_SESSION_SETTINGS,
                table_patterns=tables,
                exclude_table_patterns=exclude_tables,
                exports=tuple(exported),
            ).to_map()

        streams = produce()
        result = store(repo, streams, finish)
    finally:
        if streams is not None:
            with contextlib.suppress(Exception):
                streams.close()
        conn.close()
    return result, db, tuple(exported)
