"""Restore: a files snapshot into a directory, a logical dump into a database; and
`restore`, which lets the snapshot's kind decide (a physical snapshot goes to
service/pitr.py).

Each restore is one "restore" run: the snapshot it read, the bytes it wrote, where they went
(a directory, a database, a data directory) and, when the caller gives one, the reason: what
an auditor asks of anyone who brought patient data back out of a backup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from medvault.errors import UsageError
from medvault.service.selectors import find_snapshot

if TYPE_CHECKING:
    from medvault.config import PostgresSourceSettings
    from medvault.recovery.files import RestoreResult as TreeRestoreResult
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.service.hooks import HookPhase
    from medvault.service.pitr import PhysicalRestoreResult, RecoverySetup
    from medvault.service.redis import RedisRestoreOptions, RedisRestoreResult
    from medvault.service.runs import Run
    from medvault.service.session import Session

_Restored = TypeVar("_Restored")

# The shell's progress display, opened once the snapshot is found and so its size known
# (None: not known, e.g. for a partial restore); it yields the callback that counts bytes.
ProgressDisplay = Callable[[int | None], AbstractContextManager[Callable[[int], None]]]


@contextlib.contextmanager
def no_progress(_total: int | None) -> Iterator[Callable[[int], None]]:
    yield lambda _n: None


# -- options and results ------------------------------------------------------------------


@dataclass(frozen=True)
class FilesRestoreOptions:
    snapshot: str  # id, prefix, latest or latest:SOURCE
    target: str  # the directory to restore into
    includes: tuple[str, ...] = ()  # only these paths of the snapshot
    overwrite: bool = False
    keep_setuid: bool = False
    reason: str | None = None  # why: recorded with the run


@dataclass(frozen=True)
class LogicalRestoreOptions:
    snapshot: str
    database: str | None = None  # created when missing; not needed for list_only
    tables: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ()
    clean: bool = False
    list_only: bool = False  # show what the dump holds, restore nothing
    into: str | None = None  # the one --table, restored under this SCHEMA.NAME
    reason: str | None = None


@dataclass(frozen=True)
class RestoreOptions:
    """`medvault restore SNAP`: the options of every kind; the snapshot's kind decides which
    apply (see `restore`)."""

    snapshot: str
    target: str | None = None  # files: the directory (physical: an older spelling, see pitr)
    includes: tuple[str, ...] = ()
    overwrite: bool = False
    keep_setuid: bool = False
    database: str | None = None
    tables: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ()
    clean: bool = False
    list_only: bool = False
    append: bool = False  # CSV: load into tables that hold rows already
    into: str | None = None  # logical: the one --table, restored under this SCHEMA.NAME
    pgdata: str | None = None
    recovery: RecoverySetup | None = None  # physical: target, start, ...; None: defaults
    redis: RedisRestoreOptions | None = None  # Redis: a server (--redis-url) or an RDB file
    reason: str | None = None


@dataclass(frozen=True)
class RestoredFiles:
    """What a restore wrote into a directory (a files target or a data directory)."""

    files: int
    files_unchanged: int
    removed: int
    dirs: int
    symlinks: int
    bytes_written: int
    duration: float  # seconds
    skipped: tuple[str, ...]
    setid_cleared: int

    @classmethod
    def of(cls, done: TreeRestoreResult) -> RestoredFiles:
        return cls(
            files=done.files,
            files_unchanged=done.files_unchanged,
            removed=done.removed,
            dirs=done.dirs,
            symlinks=done.symlinks,
            bytes_written=done.bytes_written,
            duration=done.duration,
            skipped=tuple(done.skipped),
            setid_cleared=done.setid_cleared,
        )


@dataclass(frozen=True)
class FilesRestoreResult:
    snapshot_id: str
    short_id: str
    target: str
    written: RestoredFiles
    hook_problem: str | None = None  # an after_restore hook that failed (the files stay)


@dataclass(frozen=True)
class LogicalListing:
    """What a logical dump holds (`--list`): pg_restore's list, and the row counts recorded
    at backup."""

    snapshot_id: str
    short_id: str
    database: str
    snapshot_time: str
    toc: tuple[str, ...]
    row_counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CsvTableRestored:
    table: str  # schema.table
    rows: int
    created: bool  # made from the recorded columns and types (database restores)


@dataclass(frozen=True)
class CsvRestoreResult:
    """A CSV export's tables loaded into a database, or its files written into a
    directory."""

    snapshot_id: str
    short_id: str
    database: str | None
    directory: str | None
    tables: tuple[CsvTableRestored, ...]
    files: tuple[str, ...]
    bytes_read: int
    duration: float
    hook_problem: str | None = None  # an after_restore hook that failed (the rows stay)
    # `[source.NAME.restore] checks` run in the database loaded: name, ok, detail, seconds.
    checks: tuple[dict[str, Any], ...] = ()
    check_failure: str | None = None  # the first that did not pass (the run failed)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


@dataclass(frozen=True)
class LogicalRestoreResult:
    snapshot_id: str
    short_id: str
    database: str
    created: bool
    row_counts: dict[str, int]  # restored, and equal to those recorded at backup
    bytes_read: int
    duration: float
    # `[source.NAME.restore] checks` run in the restored database: name, ok, detail, seconds.
    checks: tuple[dict[str, object], ...] = ()
    check_failure: str | None = None  # the first that did not pass (the run failed)
    hook_problem: str | None = None  # an after_restore hook that failed (the data stays)
    into: str | None = None  # the new table, when one table was restored under a new name

    @property
    def rows(self) -> int:
        return sum(self.row_counts.values())


# -- the operations -------------------------------------------------------------------------


def restore_files(
    session: Session, options: FilesRestoreOptions, *, progress: ProgressDisplay | None = None
) -> FilesRestoreResult:
    """Restore a files snapshot (or the paths `includes` of it) into a directory."""
    with session.run("restore") as run:
        note_reason(run, options.reason)
        _check_includes(options.includes)
        repo, snap = _find(session, run, options.snapshot)
        with restore_hooks(session, run, snap, options.target) as hooks:
            done = _files(run, repo, snap, options, progress or no_progress)
        return replace(done, hook_problem=hooks.after_failure)


def restore_logical(
    session: Session, options: LogicalRestoreOptions, *, progress: ProgressDisplay | None = None
) -> LogicalRestoreResult | LogicalListing:
    """Restore a logical dump into a database of the snapshot's source server (created when
    missing) and prove its row counts; or, with list_only, show what the dump holds."""
    with session.run("restore") as run:
        note_reason(run, options.reason)
        repo, snap = _find(session, run, options.snapshot)
        if options.list_only:
            return _logical(session, run, repo, snap, options, progress or no_progress)
        with restore_hooks(session, run, snap, f"database {options.database}") as hooks:
            done = _logical(session, run, repo, snap, options, progress or no_progress)
        return with_hook_problem(done, hooks.after_failure)


def restore(
    session: Session, options: RestoreOptions, *, progress: ProgressDisplay | None = None
) -> (
    FilesRestoreResult
    | LogicalRestoreResult
    | LogicalListing
    | PhysicalRestoreResult
    | CsvRestoreResult
    | RedisRestoreResult
):
    """Restore a snapshot whichever its kind: files into `target`, a logical dump into
    `database`, a physical backup into `pgdata` (with point-in-time recovery), a Redis RDB
    into a running server or a file."""
    from medvault.service import pitr

    shown = progress or no_progress
    with session.run("restore") as run:
        note_reason(run, options.reason)
        _check_includes(options.includes)  # refused before any passphrase is asked for
        repo, snap = _find(session, run, options.snapshot)
        setup = options.recovery or pitr.RecoverySetup()
        if setup.recovery_target is not None and snap.kind != "postgres.physical":
            raise UsageError("--recovery-target applies to physical PostgreSQL snapshots only")
        if options.into is not None and snap.kind != "postgres.logical":
            raise UsageError("--into applies to one --table of a logical snapshot")
        if options.append and snap.kind != "postgres.csv":
            raise UsageError("--append applies to CSV snapshots only")
        if options.redis is not None and snap.kind != "redis":
            raise UsageError("--redis-url and --rdb-file apply to Redis snapshots only")
        if snap.kind == "postgres.physical" and options.pgdata is None:
            raise UsageError("a physical PostgreSQL snapshot is restored with --pgdata DIR")
        databases = ("postgres.physical", "postgres.logical", "postgres.csv", "redis")
        if snap.kind not in databases and options.target is None:
            raise UsageError("give the directory to restore into with --target DIR")
        logical_whole = snap.kind == "postgres.logical" and options.into is None
        if logical_whole and not (options.list_only or options.database):
            raise UsageError(
                "give the database to restore into with --database NAME (it is created when "
                "missing)"
            )
        if options.list_only or not session.configured_sources():
            return _restore_kind(session, run, repo, snap, options, shown)
        target = options.pgdata or options.target
        if snap.kind in ("postgres.logical", "postgres.csv") and options.database:
            target = f"database {options.database}"
        if snap.kind == "redis" and options.redis is not None:
            target = options.redis.url or options.redis.rdb_file
        with restore_hooks(session, run, snap, target) as hooks:
            done = _restore_kind(session, run, repo, snap, options, shown)
        return with_hook_problem(done, hooks.after_failure)


def _restore_kind(
    session: Session,
    run: Run,
    repo: Repository,
    snap: Snapshot,
    options: RestoreOptions,
    shown: ProgressDisplay,
) -> (
    FilesRestoreResult
    | LogicalRestoreResult
    | LogicalListing
    | PhysicalRestoreResult
    | CsvRestoreResult
    | RedisRestoreResult
):
    from medvault.service import pitr

    setup = options.recovery or pitr.RecoverySetup()
    if snap.kind == "redis":
        from medvault.service.redis import RedisRestoreOptions, restore_in_run

        with shown(total_bytes(snap)) as advance:
            return restore_in_run(
                session, run, repo, snap, options.redis or RedisRestoreOptions(), advance
            )
    if snap.kind == "postgres.csv":
        return _csv(session, run, repo, snap, options, shown)
    if snap.kind == "postgres.logical":
        logical = LogicalRestoreOptions(
            snapshot=options.snapshot,
            database=options.database,
            tables=options.tables,
            schemas=options.schemas,
            clean=options.clean,
            list_only=options.list_only,
            into=options.into,
        )
        return _logical(session, run, repo, snap, logical, shown)
    if snap.kind == "postgres.physical":
        if options.pgdata is None:
            raise UsageError("a physical PostgreSQL snapshot is restored with --pgdata DIR")
        recovery_target, notice = pitr.resolve_recovery_target(
            setup.recovery_target, options.target
        )
        if notice is not None:
            session.notes.append(notice)
        setup = replace(setup, recovery_target=recovery_target)
        return pitr.restore_found(session, run, repo, snap, options.pgdata, setup, None, shown)
    if options.target is None:
        raise UsageError("give the directory to restore into with --target DIR")
    files = FilesRestoreOptions(
        snapshot=options.snapshot,
        target=options.target,
        includes=options.includes,
        overwrite=options.overwrite,
        keep_setuid=options.keep_setuid,
    )
    return _files(run, repo, snap, files, shown)


# -- the work -------------------------------------------------------------------------------


def restore_hooks(
    session: Session, run: Run, snap: Snapshot, target: str | None
) -> AbstractContextManager[HookPhase]:
    """The snapshot's source's before_restore and after_restore hooks around a restore (of
    any kind: `restore`, and `pitr` too)."""
    from medvault.service.hooks import around

    return around(session, run, snap.source, restore=True, snapshot=snap.id, target=target)


def with_hook_problem(done: _Restored, problem: str | None) -> _Restored:
    """The result, saying which after_restore hook failed (the shell exits incomplete); a
    result without the field (a listing) says it in the session's notes only."""
    if problem is None or not hasattr(done, "hook_problem"):
        return done
    return replace(done, hook_problem=problem)  # type: ignore[type-var]


def note_reason(run: Run, reason: str | None) -> None:
    if reason:
        run.details["reason"] = reason
        run.justification = reason


def _check_includes(includes: tuple[str, ...]) -> None:
    from medvault.recovery.files import include_parts

    for path in includes:
        include_parts(path)


def _find(session: Session, run: Run, snapshot: str) -> tuple[Repository, Snapshot]:
    repo = session.open()
    run.repository = repo.url
    snap = find_snapshot(repo, snapshot, run)
    run.source = snap.source
    run.touched(snap.id)
    run.details["kind"] = snap.kind
    run.recovery_point = snap.time  # a physical restore says more once its target is known
    return repo, snap


def total_bytes(snap: Snapshot) -> int | None:
    return int(snap.stats.get("total_bytes", 0)) or None


def _files(
    run: Run,
    repo: Repository,
    snap: Snapshot,
    options: FilesRestoreOptions,
    progress: ProgressDisplay,
) -> FilesRestoreResult:
    from medvault.recovery.files import restore_files as restore_tree

    run.details["target"] = options.target
    run.destination = options.target
    if options.includes:
        run.details["includes"] = list(options.includes)
    with progress(total_bytes(snap) if not options.includes else None) as advance:
        done = restore_tree(
            repo,
            snap,
            options.target,
            includes=options.includes,
            overwrite=options.overwrite,
            on_progress=advance,
            keep_setuid=options.keep_setuid,
        )
    run.add_bytes(restored=done.bytes_written)
    run.details["files"] = done.files
    if done.setid_cleared:
        repo.warnings.append(
            f"{done.setid_cleared} file(s) restored without their setuid/setgid bits; "
            "restore them with --keep-setuid if you trust every client that writes this "
            "repository"
        )
    return FilesRestoreResult(snap.id, snap.short_id, options.target, RestoredFiles.of(done))


def _logical(
    session: Session,
    run: Run,
    repo: Repository,
    snap: Snapshot,
    options: LogicalRestoreOptions,
    progress: ProgressDisplay,
) -> LogicalRestoreResult | LogicalListing:
    if options.list_only:
        run.details["list_only"] = True
        return _listing(session, repo, snap)
    settings = _source_settings(session, snap)
    if options.into is not None:
        return _logical_into(session, run, repo, snap, options, settings, progress)
    if not options.database:
        raise UsageError(
            "give the database to restore into with --database NAME (it is created when missing)"
        )
    from medvault.recovery.postgres_logical import restore_logical as restore_dump

    run.details["database"] = options.database
    run.destination = f"database {options.database}"
    if options.tables:
        run.details["tables"] = list(options.tables)
    if options.schemas:
        run.details["schemas"] = list(options.schemas)
    if options.clean:
        run.details["clean"] = True
    with progress(total_bytes(snap)) as advance:
        done = restore_dump(
            repo,
            snap,
            dsn=settings.dsn,
            database=options.database,
            tables=options.tables,
            schemas=options.schemas,
            clean=options.clean,
            pg_bin=settings.pg_bin,
            on_progress=advance,
        )
    run.add_bytes(restored=done.bytes_read)
    run.details["created"] = done.created
    run.details["rows"] = sum(done.row_counts.values())
    from medvault.service.hooks import restore_checks

    checks, failure = restore_checks(session, run, snap.source, settings.dsn, done.database)
    return LogicalRestoreResult(
        snapshot_id=snap.id,
        short_id=snap.short_id,
        database=done.database,
        created=done.created,
        row_counts=dict(done.row_counts),
        bytes_read=done.bytes_read,
        duration=done.duration,
        checks=tuple(checks),
        check_failure=failure,
    )


def _csv(
    session: Session,
    run: Run,
    repo: Repository,
    snap: Snapshot,
    options: RestoreOptions,
    progress: ProgressDisplay,
) -> CsvRestoreResult:
    """A CSV export: its tables into a database (`database`, default the source DSN's) with
    COPY FROM, or its files into the directory `target`."""
    from medvault.recovery.postgres_csv import restore_csv, write_csv_files

    unused = [
        flag
        for flag, given in (
            ("--include", options.includes),
            ("--schema", options.schemas),
            ("--clean", options.clean),
            ("--list", options.list_only),
            ("--pgdata", options.pgdata),
        )
        if given
    ]
    if unused:
        raise UsageError(f"{unused[0]} does not apply to a CSV snapshot")
    if options.tables:
        run.details["tables"] = list(options.tables)
    with progress(None if options.tables else total_bytes(snap)) as advance:
        if options.target is not None:
            if options.database is not None or options.append:
                raise UsageError("--target writes the CSV files; --database and --append load them")
            run.details["target"] = options.target
            run.destination = options.target
            done = write_csv_files(
                repo, snap, options.target, tables=options.tables, on_progress=advance
            )
        else:
            dsn = _csv_restore_dsn(session, snap)
            if options.append:
                run.details["append"] = True
            done = restore_csv(
                repo,
                snap,
                dsn=dsn,
                database=options.database,
                tables=options.tables,
                append=options.append,
                on_progress=advance,
            )
            run.details["database"] = done.database
            run.destination = f"database {done.database}"
    run.add_bytes(restored=done.bytes_read)
    run.details["rows"] = sum(t.rows for t in done.tables)
    checks: list[dict[str, Any]] = []
    failure = None
    if done.database is not None:
        from medvault.service.hooks import restore_checks

        checks, failure = restore_checks(session, run, snap.source, dsn, done.database)
    return CsvRestoreResult(
        snapshot_id=snap.id,
        short_id=snap.short_id,
        database=done.database,
        directory=done.directory,
        tables=tuple(CsvTableRestored(t.key, t.rows, t.created) for t in done.tables),
        files=done.files,
        bytes_read=done.bytes_read,
        duration=done.duration,
        checks=tuple(checks),
        check_failure=failure,
    )


def _csv_restore_dsn(session: Session, snap: Snapshot) -> str:
    """The server a CSV snapshot loads into: its source's (postgres or postgres-csv)."""
    from medvault.config import PostgresCsvSourceSettings, PostgresSourceSettings

    settings = session.settings.source.get(snap.source) if session.configured_sources() else None
    if not isinstance(settings, PostgresSourceSettings | PostgresCsvSourceSettings):
        raise UsageError(
            f"snapshot {snap.short_id} comes from source {snap.source}, which medvault.toml "
            f"does not define as PostgreSQL; add [source.{snap.source}] with the dsn of the "
            "server to load into, or write the files out with --target DIR"
        )
    return settings.dsn


def _logical_into(
    session: Session,
    run: Run,
    repo: Repository,
    snap: Snapshot,
    options: LogicalRestoreOptions,
    settings: PostgresSourceSettings,
    progress: ProgressDisplay,
) -> LogicalRestoreResult:
    """One table restored under a new name into the database (default: the source's)."""
    from medvault.postgres.server import dsn_field
    from medvault.recovery.logical_table import restore_table_into
    from medvault.recovery.postgres.table_copy import parse_table_name
    from medvault.verification.scratch import scratch_database_name

    assert options.into is not None
    if len(options.tables) != 1 or options.schemas or options.clean:
        raise UsageError("--into restores exactly one --table under a new name (no --schema)")
    into = parse_table_name(options.into)
    database = options.database or dsn_field(settings.dsn, "dbname") or "postgres"
    run.details.update(database=database, tables=list(options.tables), into=str(into))
    run.destination = f"table {into} in database {database}"
    with progress(total_bytes(snap)) as advance:
        done = restore_table_into(
            repo,
            snap,
            dsn=settings.dsn,
            database=database,
            table=options.tables[0],
            into=into,
            scratch_database=scratch_database_name(),
            pg_bin=settings.pg_bin,
            on_progress=advance,
        )
    run.add_bytes(restored=done.bytes_read)
    run.details["rows"] = done.rows
    return LogicalRestoreResult(
        snapshot_id=snap.id,
        short_id=snap.short_id,
        database=database,
        created=False,
        row_counts={str(into): done.rows},
        bytes_read=done.bytes_read,
        duration=done.duration,
        into=str(into),
    )


def _listing(session: Session, repo: Repository, snap: Snapshot) -> LogicalListing:
    from medvault.postgres.facts import LogicalFacts
    from medvault.recovery.postgres_logical import list_logical

    pg_bin = None
    if snap.source in session.configured_sources():
        pg_bin = getattr(session.settings.source[snap.source], "pg_bin", None)
    toc = list_logical(repo, snap, pg_bin=pg_bin)
    facts = LogicalFacts.of(snap)
    return LogicalListing(
        snapshot_id=snap.id,
        short_id=snap.short_id,
        database=facts.database,
        snapshot_time=facts.snapshot_time,
        toc=tuple(toc),
        row_counts=dict(facts.row_counts),
    )


def _source_settings(session: Session, snap: Snapshot) -> PostgresSourceSettings:
    """The server to restore to: the snapshot's source in medvault.toml."""
    from medvault.config import PostgresSourceSettings

    settings = session.settings.source.get(snap.source) if session.configured_sources() else None
    if not isinstance(settings, PostgresSourceSettings):
        raise UsageError(
            f"snapshot {snap.short_id} comes from source {snap.source}, which medvault.toml "
            f"does not define as PostgreSQL; add [source.{snap.source}] with kind = "
            '"postgres" and the dsn of the server to restore into'
        )
    return settings
