"""Restore a logical snapshot: the stored pg_dump archive streamed into `pg_restore`.

The archive never touches the disk: it flows from the repository through a pipe. pg_dump
wrote it to a pipe too, so its table of contents has no data offsets and pg_restore reads it
front to back; that works for selective restores as long as entries are restored in archive
order, which a list file (-L) built from the archive's own order guarantees.

Selections: pg_restore's -t takes a bare table name and -n a schema, and combining several
schema-qualified tables with them would select the cross product; -n alone skips the CREATE
SCHEMA. So the selection is computed with pg_restore's own filters (`--list` with -n/-t, one
run per schema), merged in archive order with the SCHEMA entries the target lacks, and handed
to pg_restore as -L. The list file holds object names only, never row data.

The restore runs as one transaction that stops at the first error: a failed restore (even
with --clean) leaves the target as it was. Afterwards the restored tables are counted and
compared with the counts recorded at backup. Without --clean, pg_restore refuses tables that
exist already, so a successful restore always created the tables it filled and the counts
must match exactly; with --clean the tables were dropped and recreated: the same holds.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from medvault import childenv
from medvault.errors import (
    IntegrityError,
    MedvaultError,
    RecoveryFailed,
    RestoreTargetError,
    SnapshotNotFound,
    first_line,
)
from medvault.postgres.facts import KIND_LOGICAL, LogicalFacts
from medvault.postgres.programs import StderrTail, find_program, program_major
from medvault.postgres.server import connect, server_errors
from medvault.recovery.stream import iter_stream

if TYPE_CHECKING:
    import psycopg

    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository

TOC_ENTRY = re.compile(r"^(\d+);")
SCHEMA_ENTRY = re.compile(r"^(\d+); \d+ \d+ SCHEMA - (.+) \S+$")


@dataclass
class LogicalRestoreResult:
    database: str
    created: bool
    row_counts: dict[str, int] = field(default_factory=dict)  # checked against the snapshot
    bytes_read: int = 0
    duration: float = 0.0


def _check_kind(snapshot: Snapshot) -> None:
    if snapshot.kind != KIND_LOGICAL:
        raise RestoreTargetError(
            f"snapshot {snapshot.short_id} is a {snapshot.kind} snapshot, not a logical dump"
        )


def _pg_restore(snapshot: Snapshot, pg_bin: str | None, server_major: int | None = None) -> str:
    """pg_restore no older than the pg_dump that wrote the archive (older ones refuse it)."""
    dumped_by = program_major(LogicalFacts.of(snapshot).pg_dump_version)
    majors = [m for m in (dumped_by, server_major) if m is not None]
    return find_program("pg_restore", pg_bin, max(majors) if majors else None)


def _split_key(key: str) -> tuple[str, str]:
    schema, _, table = key.partition(".")
    return schema, table


def _feed(
    stdin: IO[bytes],
    repo: Repository,
    snapshot: Snapshot,
    on_progress: Callable[[int], None] | None,
) -> int:
    """Write the archive into pg_restore; stop quietly when it stops reading (--list reads
    only the table of contents). Returns the bytes written."""
    written = 0
    data = iter_stream(repo, snapshot)
    try:
        for chunk in data:
            view = memoryview(chunk)
            while view:
                view = view[stdin.write(view) or 0 :]
            written += len(chunk)
            if on_progress is not None:
                on_progress(len(chunk))
    except BrokenPipeError:
        pass  # pg_restore is done with its input; its exit status says how it went
    finally:
        data.close()
        with contextlib.suppress(BrokenPipeError):
            stdin.close()
    return written


def run_pg_restore(
    pg_restore: str,
    args: list[str],
    repo: Repository,
    snapshot: Snapshot,
    *,
    on_progress: Callable[[int], None] | None = None,
    capture: bool = False,
    dsn: str | None = None,
) -> tuple[int, str, StderrTail, int]:
    """pg_restore ARGS with the archive on stdin, into the database of `dsn` when given:
    (exit code, stdout, stderr tail, bytes fed)."""
    with childenv.libpq_client(dsn) as client:
        target = [f"--dbname={client.dsn}"] if client.dsn is not None else []
        proc = subprocess.Popen(
            [pg_restore, *args, *target],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            bufsize=0,
            env=client.env,
            pass_fds=client.pass_fds,
        )
    assert proc.stdin is not None and proc.stderr is not None
    stderr = StderrTail(proc.stderr)
    out: list[bytes] = []
    reader = None
    if capture:
        assert proc.stdout is not None
        stdout = proc.stdout
        reader = threading.Thread(target=lambda: out.append(stdout.read()), daemon=True)
        reader.start()
    try:
        fed = _feed(proc.stdin, repo, snapshot, on_progress)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    code = proc.wait()
    if reader is not None:
        reader.join()
    return code, b"".join(out).decode("utf-8", "replace"), stderr, fed


def list_logical(repo: Repository, snapshot: Snapshot, *, pg_bin: str | None = None) -> list[str]:
    """`pg_restore --list` of the stored archive, as lines."""
    _check_kind(snapshot)
    pg_restore = _pg_restore(snapshot, pg_bin)
    code, out, stderr, _fed = run_pg_restore(pg_restore, ["--list"], repo, snapshot, capture=True)
    if code != 0:
        raise IntegrityError(
            f"pg_restore cannot read the archive in snapshot {snapshot.short_id}: "
            f"{stderr.summary()}"
        )
    return out.splitlines()


@dataclass(frozen=True)
class Selection:
    tables: tuple[str, ...] = ()  # 'name' (any schema) or 'schema.name'
    schemas: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        return not self.tables and not self.schemas

    def matches(self, key: str) -> bool:
        schema, table = _split_key(key)
        if self.everything or schema in self.schemas:
            return True
        return any(key == t if "." in t else table == t for t in self.tables)


def selected_counts(snapshot: Snapshot, selection: Selection) -> dict[str, int]:
    """The recorded row counts of the tables a selection restores; unknown names are errors."""
    recorded = dict(LogicalFacts.of(snapshot).row_counts)
    for wanted in selection.tables:
        if not any(Selection(tables=(wanted,)).matches(key) for key in recorded):
            raise SnapshotNotFound(
                f"table {wanted} is not in snapshot {snapshot.short_id}; "
                f"see `medvault restore {snapshot.short_id} --list`"
            )
    for schema in selection.schemas:
        if not any(_split_key(key)[0] == schema for key in recorded):
            raise SnapshotNotFound(
                f"schema {schema} holds no table in snapshot {snapshot.short_id}; "
                f"see `medvault restore {snapshot.short_id} --list`"
            )
    return {key: n for key, n in recorded.items() if selection.matches(key)}


def _filter_runs(selection: Selection) -> list[list[str]]:
    """pg_restore filter arguments, one run per group, whose union is the selection."""
    runs: list[list[str]] = []
    if selection.schemas:
        runs.append([arg for s in selection.schemas for arg in ("-n", s)])
    bare = [t for t in selection.tables if "." not in t]
    if bare:
        runs.append([arg for t in bare for arg in ("-t", t)])
    by_schema: dict[str, list[str]] = {}
    for wanted in selection.tables:
        if "." in wanted:
            schema, table = _split_key(wanted)
            by_schema.setdefault(schema, []).append(table)
    for schema, tables in by_schema.items():
        runs.append(["-n", schema, *[arg for t in tables for arg in ("-t", t)]])
    return runs


def _toc_ids(lines: Iterable[str]) -> list[str]:
    return [m.group(1) for line in lines if (m := TOC_ENTRY.match(line))]


def build_list(
    pg_restore: str,
    repo: Repository,
    snapshot: Snapshot,
    selection: Selection,
    needed_schemas: set[str],
) -> str:
    """A -L list file: the selected entries in archive order, plus CREATE SCHEMA entries for
    `needed_schemas` (those the selected tables live in and the target lacks)."""
    full = list_logical(repo, snapshot)
    chosen: set[str] = set()
    for args in _filter_runs(selection):
        code, out, stderr, _fed = run_pg_restore(
            pg_restore, ["--list", *args], repo, snapshot, capture=True
        )
        if code != 0:
            raise IntegrityError(f"pg_restore --list failed: {stderr.summary()}")
        chosen.update(_toc_ids(out.splitlines()))
    for line in full:
        match = SCHEMA_ENTRY.match(line)
        if match and match.group(2) in needed_schemas:
            chosen.add(match.group(1))
    kept = [line for line in full if (m := TOC_ENTRY.match(line)) and m.group(1) in chosen]
    return "".join(line + "\n" for line in kept)


def _database_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    )


def _create_database(conn: psycopg.Connection[Any], name: str, facts: LogicalFacts) -> None:
    """From template0 (a dump restores into an empty database), with the source's encoding
    and locale when it recorded them."""
    import psycopg
    from psycopg import sql

    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))]
    for option, value in (
        ("ENCODING", facts.encoding),
        ("LC_COLLATE", facts.lc_collate),
        ("LC_CTYPE", facts.lc_ctype),
    ):
        if value:
            parts.append(sql.SQL(option + " {}").format(sql.Literal(value)))
    try:
        conn.execute(sql.SQL(" ").join(parts))
    except psycopg.Error as exc:
        reason = first_line(exc)
        raise RestoreTargetError(
            f"cannot create database {name}: {reason}; create it yourself "
            "(e.g. createdb -T template0) and run the restore again"
        ) from None


def _drop_database(conn: psycopg.Connection[Any], name: str) -> None:
    from psycopg import sql

    with contextlib.suppress(Exception):
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def _existing_schemas(dsn: str, database: str) -> set[str]:
    with (
        connect(dsn, dbname=database, what="the restore target") as conn,
        server_errors(f"reading the schemas of database {database}", RecoveryFailed),
    ):
        return {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}


def _create_schemas(dsn: str, database: str, schemas: set[str]) -> list[str]:
    """A dump of named tables (pg_dump -t) holds no CREATE SCHEMA: the schemas its tables
    live in are made when the target lacks them. Returns those made."""
    from psycopg import sql

    missing = sorted(schemas - _existing_schemas(dsn, database))
    with (
        connect(dsn, dbname=database, what="the restore target") as conn,
        server_errors(f"creating schemas in database {database}", RestoreTargetError),
    ):
        for schema in missing:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return missing


def _drop_empty_schemas(dsn: str, database: str, schemas: list[str]) -> None:
    """Undo _create_schemas after a failed restore (RESTRICT: only while still empty)."""
    from psycopg import sql

    with connect(dsn, dbname=database, what="the restore target") as conn:
        for schema in schemas:
            with contextlib.suppress(Exception):
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(schema)))


def count_rows(dsn: str, database: str, keys: Iterable[str]) -> dict[str, int | None]:
    """Exact row counts of tables (None: the table does not exist)."""
    from psycopg import sql

    counts: dict[str, int | None] = {}
    with (
        connect(dsn, dbname=database, what="the restore target") as conn,
        server_errors(f"counting rows in database {database}", RecoveryFailed),
    ):
        conn.execute("SET row_security = off")
        for key in keys:
            schema, table = _split_key(key)
            exists = conn.execute(
                "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s",
                (schema, table),
            ).fetchone()
            if exists is None:
                counts[key] = None
                continue
            query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            row = conn.execute(query).fetchone()
            counts[key] = int(row[0]) if row else None
    return counts


def _restore_failed(stderr: StderrTail, database: str, clean: bool) -> MedvaultError:
    reason = stderr.summary()
    hint = ""
    if "already exists" in reason and not clean:
        hint = "; pass --clean to replace existing objects, or restore into a new --database"
    return RestoreTargetError(f"pg_restore into database {database} failed: {reason}{hint}")


def _remove_listdir(listdir: str) -> None:
    """The selection list names the tables restored: removed, and an error if it cannot be."""
    from medvault.dirpath import remove_tree

    parent, name = os.path.split(listdir)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        problems = remove_tree(fd, os.fsencode(name), os.fsencode(parent))
    finally:
        os.close(fd)
    if problems:
        raise RestoreTargetError(f"cannot remove the restore's scratch list: {problems[0]}")


def restore_logical(
    repo: Repository,
    snapshot: Snapshot,
    *,
    dsn: str,
    database: str,
    tables: tuple[str, ...] = (),
    schemas: tuple[str, ...] = (),
    clean: bool = False,
    pg_bin: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> LogicalRestoreResult:
    """Restore a logical snapshot into `database` on the server of `dsn` (created when
    missing), then prove the restored row counts equal those recorded at backup."""
    from psycopg.conninfo import make_conninfo

    _check_kind(snapshot)
    started = time.monotonic()
    selection = Selection(tables, schemas)
    expected = selected_counts(snapshot, selection)
    with (
        connect(dsn, what="the restore target's server") as maintenance,
        server_errors("the restore target's server", RecoveryFailed),
    ):
        major = int(maintenance.info.server_version) // 10000
        created = not _database_exists(maintenance, database)
        if created:
            _create_database(maintenance, database, LogicalFacts.of(snapshot))
    target = make_conninfo(dsn, dbname=database)
    pg_restore = _pg_restore(snapshot, pg_bin, major)
    listdir = None
    made: list[str] = []
    try:
        if LogicalFacts.of(snapshot).selective:
            made = _create_schemas(dsn, database, {_split_key(key)[0] for key in expected})
        args = ["--exit-on-error", "--single-transaction", "--no-password"]
        if clean:
            args += ["--clean", "--if-exists"]
        if not selection.everything:
            present = _existing_schemas(dsn, database)
            needed = {_split_key(key)[0] for key in expected} | set(schemas)
            toc = build_list(pg_restore, repo, snapshot, selection, needed - present)
            listdir = tempfile.mkdtemp(prefix="medvault-restore-")  # mode 700
            listfile = os.path.join(listdir, "selection.list")
            with open(listfile, "w", encoding="utf-8") as handle:
                handle.write(toc)
            args += ["-L", listfile]
        code, _out, stderr, fed = run_pg_restore(
            pg_restore, args, repo, snapshot, on_progress=on_progress, dsn=target
        )
        if code != 0:
            raise _restore_failed(stderr, database, clean)
    except BaseException:
        # pg_restore's single transaction left nothing behind; a database made for it goes too.
        if created:
            with connect(dsn, what="the restore target's server") as maintenance:
                _drop_database(maintenance, database)
        elif made:
            _drop_empty_schemas(dsn, database, made)
        raise
    finally:
        if listdir is not None:
            _remove_listdir(listdir)
    # A mismatch keeps the restored database: the DBA will want to look at it.
    restored = count_rows(dsn, database, expected)
    for key, want in expected.items():
        got = restored[key]
        if got is None:
            raise IntegrityError(
                f"table {key} is missing after the restore into {database} "
                f"(the backup recorded {want} rows)"
            )
        if got != want:
            raise IntegrityError(
                f"table {key} in {database} has {got} rows after the restore; "
                f"the backup recorded {want}"
            )
    return LogicalRestoreResult(
        database=database,
        created=created,
        row_counts=expected,
        bytes_read=fed,
        duration=time.monotonic() - started,
    )
