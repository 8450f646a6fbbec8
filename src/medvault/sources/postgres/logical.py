"""PostgreSQL logical backups: `pg_dump -Fc` streamed straight into the repository.

Consistency: one REPEATABLE READ, READ ONLY transaction exports its snapshot and stays open for
the whole dump; pg_dump runs with --snapshot set to it, and the same transaction counts the rows
of every table pg_dump dumps, in a thread, while the dump runs. Both read the very same data,
so the recorded counts are the counts of rows in the dump.

Locks: the counter waits until pg_dump holds its ACCESS SHARE locks on the tables before it
counts. Counting first would hold a lock of ours that a waiting DDL statement queues behind,
and pg_dump's own lock request would then queue behind that DDL for ever (we only end our
transaction when pg_dump ends). Once pg_dump holds the locks, no TRUNCATE or table rewrite
(which are not MVCC-safe) can change what either of us sees.

Named tables: pg_dump's -t / -T patterns are resolved here first, by pg_dump's own rules
(postgres/patterns.py), inside the exporting transaction: a pattern matching nothing is
refused before pg_dump starts, and only the tables the dump holds are counted.

The dump is uncompressed (-Z0): medvault compresses every chunk with zstd itself, and plain
COPY data deduplicates between days where a compressed stream does not. No temporary file is
written: pg_dump's stdout is a pipe into the chunker.
"""

from __future__ import annotations

import contextlib
import fcntl
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

from medvault import childenv
from medvault.errors import MedvaultError, SourceUnavailable, first_line
from medvault.postgres.facts import KIND_LOGICAL, LogicalFacts
from medvault.postgres.programs import StderrTail, find_program, program_version
from medvault.postgres.server import connect, describe_dsn, server_errors
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

F_SETPIPE_SZ = 1031  # Linux: a larger pipe means fewer, larger reads of pg_dump's output
PIPE_SIZE = 1024 * 1024
STDOUT_BUFFER = 64 * 1024
LOCK_POLL_S = 0.02

# The tables whose data pg_dump dumps by default: ordinary tables and partitions (partitioned
# parents hold no rows), in every schema but the system ones, except temporary tables and
# members of extensions (extension config tables are dumped with a filter, if at all).
TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  AND NOT EXISTS (
    SELECT 1 FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""

# Locks pg_dump's session holds on the tables, found by its unique application_name.
# pg_stat_activity is cached per transaction, hence the clear before each poll.
DUMP_LOCKS_SQL = """
SELECT count(DISTINCT l.relation)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE a.application_name = %s AND l.locktype = 'relation' AND l.granted
  AND l.relation = ANY(%s)
"""


@dataclass
class LogicalBackupResult:
    snapshot: Snapshot
    database: str
    tables: int
    rows: int
    bytes_read: int
    bytes_added: int
    duration: float


@dataclass
class LogicalDryRun:
    """What a logical backup would read and add: pg_dump ran, nothing was written."""

    database: str
    tables: int
    rows: int
    stored: StreamDryRun


T = TypeVar("T")
# Where the dump goes: the repository's sink (a backup), or a counting one (a dry run).
Store = Callable[["Repository", Iterator[tuple[bytes, "ReadsInto"]], Finisher], T]


def table_key(schema: str, table: str) -> str:
    """How a table is named in the snapshot's row_counts."""
    return f"{schema}.{table}"


def _large_stdout_buffer() -> list[str]:
    """pg_dump writes its archive through stdio, which buffers 4 KiB for a pipe: a quarter
    of a million write() calls for a 1 GB dump. coreutils' stdbuf gives it a larger buffer.
    64 KiB measured best (bench, 4 rounds each: 1.02-1.09x pg_dump -Fc against 1.13-1.19x
    without, 1.13-1.29x with 1 MiB, whose bursts stall the pipeline on both sides)."""
    program = shutil.which("stdbuf")
    return [program, f"--output={STDOUT_BUFFER}"] if program else []


def _enlarge_pipe(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, PIPE_SIZE)


class _RowCounter(threading.Thread):
    """Counts rows in the exporting transaction once pg_dump holds its table locks."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        tables: list[tuple[int, str, str]],
        app_name: str,
        dump: subprocess.Popen[bytes],
    ) -> None:
        super().__init__(name="medvault-rowcount", daemon=True)
        self.conn = conn
        self.tables = tables
        self.app_name = app_name
        self.dump = dump
        self.counts: dict[str, int] = {}
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        from psycopg import sql

        try:
            self._wait_for_dump_locks()
            for _oid, schema, table in self.tables:
                if self.stop.is_set():
                    return
                query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
                row = self.conn.execute(query).fetchone()
                assert row is not None
                self.counts[table_key(schema, table)] = int(row[0])
        except BaseException as exc:
            self.error = exc
            if self.dump.poll() is None and not self.stop.is_set():
                self.dump.kill()  # the backup fails anyway: do not dump for nothing

    def _wait_for_dump_locks(self) -> None:
        oids = [oid for oid, _schema, _table in self.tables]
        while oids and self.dump.poll() is None and not self.stop.is_set():
            self.conn.execute("SELECT pg_stat_clear_snapshot()")
            row = self.conn.execute(DUMP_LOCKS_SQL, (self.app_name, oids)).fetchone()
            if row is not None and row[0] >= len(oids):
                return
            time.sleep(LOCK_POLL_S)


def database_facts(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The facts about the database known before the dump (LogicalFacts' first fields)."""
    row = conn.execute(
        "SELECT current_database(), current_setting('server_version'),"
        " current_setting('server_version_num')::int, now(),"
        " pg_encoding_to_char(d.encoding), d.datcollate, d.datctype"
        " FROM pg_database d WHERE d.datname = current_database()"
    ).fetchone()
    assert row is not None
    facts: dict[str, Any] = {
        "database": row[0],
        "server_version": row[1],
        "server_version_num": row[2],
        "snapshot_time": row[3].isoformat(),
        "encoding": row[4],
        "lc_collate": row[5],
        "lc_ctype": row[6],
        "system_identifier": None,
    }
    # pg_control_system() may be denied to a dump-only role; the backup does not need it.
    conn.execute("SAVEPOINT medvault_facts")
    try:
        ident = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
        facts["system_identifier"] = ident[0] if ident else None
        conn.execute("RELEASE SAVEPOINT medvault_facts")
    except Exception:
        conn.execute("ROLLBACK TO SAVEPOINT medvault_facts")
    return facts


def _dump_failed(dump: subprocess.Popen[bytes], stderr: StderrTail, dsn: str) -> MedvaultError:
    return SourceUnavailable(
        f"pg_dump of {describe_dsn(dsn)} failed (exit {dump.returncode}): {stderr.summary()}"
    )


def backup_logical(
    repo: Repository | Callable[[], Repository],
    *,
    source: str,
    dsn: str,
    database: str | None = None,
    pg_bin: str | None = None,
    tags: tuple[str, ...] = (),
    tier: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    tables: tuple[str, ...] = (),
    exclude_tables: tuple[str, ...] = (),
) -> LogicalBackupResult:
    """Dump one database into a new snapshot of kind postgres.logical: every table, or
    those pg_dump's -t patterns `tables` match, less those `exclude_tables` match.

    `repo` may be a function opening the repository: it is then called once pg_dump runs,
    so that the repository's opening overlaps pg_dump's reading of the catalogs."""
    chosen = TableChoice(tables, exclude_tables)

    def store(
        repo: Repository, streams: Iterator[tuple[bytes, ReadsInto]], finish: Finisher
    ) -> StreamResult:
        return backup_streams(
            repo,
            streams,
            source=source,
            kind=KIND_LOGICAL,
            facts={},
            tags=tags,
            tier=tier,
            on_progress=on_progress,
            before_save=finish,
        )

    with server_errors(f"logical backup of source {source}"):
        stored, db, counts = _backup_logical(repo, dsn, database, pg_bin, chosen, store)
    return LogicalBackupResult(
        snapshot=stored.snapshot,
        database=db,
        tables=len(counts),
        rows=sum(counts.values()),
        bytes_read=stored.bytes_read,
        bytes_added=stored.bytes_added,
        duration=stored.duration,
    )


def dry_run_logical(
    repo: Repository | Callable[[], Repository],
    *,
    source: str,
    dsn: str,
    database: str | None = None,
    pg_bin: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    tables: tuple[str, ...] = (),
    exclude_tables: tuple[str, ...] = (),
) -> LogicalDryRun:
    """Run the dump backup_logical would, chunked against the repository's index and counted:
    no pack, index or snapshot is written, and the server sees only a read-only dump."""
    chosen = TableChoice(tables, exclude_tables)

    def store(
        repo: Repository, streams: Iterator[tuple[bytes, ReadsInto]], finish: Finisher
    ) -> StreamDryRun:
        return dry_run_streams(
            repo, streams, source=source, on_progress=on_progress, before_save=finish
        )

    with server_errors(f"dry run of a logical backup of source {source}"):
        found, db, counts = _backup_logical(repo, dsn, database, pg_bin, chosen, store)
    return LogicalDryRun(db, len(counts), sum(counts.values()), found)


@dataclass(frozen=True)
class TableChoice:
    """pg_dump's -t and -T patterns; none: every table."""

    tables: tuple[str, ...] = ()
    exclude_tables: tuple[str, ...] = ()

    def pg_dump_args(self) -> list[str]:
        args = [f"--table={t}" for t in self.tables]
        args += [f"--exclude-table={t}" for t in self.exclude_tables]
        # A -t pattern matching nothing fails pg_dump too (checked here first, by the same
        # rules, so the message names the pattern before anything runs).
        return [*args, "--strict-names"] if self.tables else args

    def select(
        self, conn: psycopg.Connection[Any], database: str, tables: list[tuple[int, str, str]]
    ) -> list[tuple[int, str, str]]:
        """The tables of `tables` (TABLES_SQL's) the patterns keep; a pattern matching no
        relation pg_dump could dump is refused."""
        from medvault.postgres.patterns import matching, no_match

        keep: set[int] | None = None
        if self.tables:
            keep = set()
            for pattern in self.tables:
                found = matching(conn, pattern, database)
                if not found:
                    raise no_match(pattern, database)
                keep.update(r.oid for r in found)
        drop: set[int] = set()
        for pattern in self.exclude_tables:
            found = matching(conn, pattern, database)
            if not found:
                raise no_match(pattern, database, excluded=True)
            drop.update(r.oid for r in found)
        return [t for t in tables if (keep is None or t[0] in keep) and t[0] not in drop]


def _backup_logical(
    repo: Repository | Callable[[], Repository],
    dsn: str,
    database: str | None,
    pg_bin: str | None,
    chosen: TableChoice,
    store: Store[T],
) -> tuple[T, str, dict[str, int]]:
    """Dump into `store`; what it returned, the database's name and the rows counted."""
    from psycopg.conninfo import make_conninfo

    conn = connect(dsn, dbname=database)
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # As pg_dump does: fail on row-level security rather than count only visible rows.
        conn.execute("SET LOCAL row_security = off")
        # The counts compete with the dump for the same cores: no JIT compilation (it costs
        # more than it saves on a count) and no parallel workers fanning out beside pg_dump.
        conn.execute("SET LOCAL jit = off")
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        db_facts = database_facts(conn)
        recorded: list[LogicalFacts] = []
        snapshot_row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert snapshot_row is not None
        tables = [(int(r[0]), r[1], r[2]) for r in conn.execute(TABLES_SQL).fetchall()]
        db = db_facts["database"]
        tables = chosen.select(conn, db, tables)
        target = make_conninfo(dsn, dbname=db)
        pg_dump = find_program("pg_dump", pg_bin, db_facts["server_version_num"] // 10000)
        dump_version = program_version(pg_dump)
        app_name = f"medvault-pg_dump-{secrets.token_hex(6)}"
        # The passfile (if any) is inherited: pg_dump keeps it open after our copy closes.
        with childenv.libpq_client(target) as client:
            dump = subprocess.Popen(
                [
                    *_large_stdout_buffer(),
                    pg_dump,
                    f"--snapshot={snapshot_row[0]}",
                    "--format=custom",
                    "--compress=0",
                    "--no-password",  # never prompt: libpq finds the password on its own
                    *chosen.pg_dump_args(),
                    f"--dbname={client.dsn}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                env=client.env | {"PGAPPNAME": app_name},
                pass_fds=client.pass_fds,
            )
        assert dump.stdout is not None and dump.stderr is not None
        _enlarge_pipe(dump.stdout)
        stderr = StderrTail(dump.stderr)
        counter = _RowCounter(conn, tables, app_name, dump)
        counter.start()

        def finish() -> dict[str, Any]:
            if dump.wait() != 0 and counter.error is None:
                counter.stop.set()
                raise _dump_failed(dump, stderr, target)
            counter.join()
            if counter.error is not None:  # it stopped pg_dump, if pg_dump still ran
                reason = first_line(counter.error)
                raise SourceUnavailable(f"cannot count rows in {describe_dsn(target)}: {reason}")
            facts = LogicalFacts(
                **db_facts,
                dump_format="custom",
                dump_compression="none",
                pg_dump_version=dump_version,
                row_counts=counter.counts,
                table_patterns=chosen.tables,
                exclude_table_patterns=chosen.exclude_tables,
            )
            recorded.append(facts)
            return facts.to_map()

        try:
            if callable(repo):
                repo = repo()
            stream = cast("ReadsInto", dump.stdout)  # bufsize=0: a raw FileIO
            result = store(repo, iter([(f"{db.replace('/', '_')}.dump".encode(), stream)]), finish)
        finally:
            counter.stop.set()
            if dump.poll() is None:
                dump.kill()
            dump.wait()
            dump.stdout.close()
            if counter.is_alive():
                with contextlib.suppress(Exception):
                    conn.cancel_safe()
                counter.join()
    finally:
        conn.close()
    return result, db, dict(recorded[-1].row_counts)
