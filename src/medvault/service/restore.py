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
from typing import TYPE_CHECKING

from medvault.errors import UsageError

if TYPE_CHECKING:
    from medvault.config import PostgresSourceSettings
    from medvault.recovery.files import RestoreResult as TreeRestoreResult
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.service.pitr import PhysicalRestoreResult, RecoverySetup
    from medvault.service.redis import RedisRestoreOptions, RedisRestoreResult
    from medvault.service.runs import Run
    from medvault.service.session import Session

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
class LogicalRestoreResult:
    snapshot_id: str
    short_id: str
    database: str
    created: bool
    row_counts: dict[str, int]  # restored, and equal to those recorded at backup
    bytes_read: int
    duration: float

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
        return _files(run, repo, snap, options, progress or no_progress)


def restore_logical(
    session: Session, options: LogicalRestoreOptions, *, progress: ProgressDisplay | None = None
) -> LogicalRestoreResult | LogicalListing:
    """Restore a logical dump into a database of the snapshot's source server (created when
    missing) and prove its row counts; or, with list_only, show what the dump holds."""
    with session.run("restore") as run:
        note_reason(run, options.reason)
        repo, snap = _find(session, run, options.snapshot)
        return _logical(session, run, repo, snap, options, progress or no_progress)


def restore(
    session: Session, options: RestoreOptions, *, progress: ProgressDisplay | None = None
) -> (
    FilesRestoreResult
    | LogicalRestoreResult
    | LogicalListing
    | PhysicalRestoreResult
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
        if snap.kind == "redis":
            from medvault.service.redis import RedisRestoreOptions, restore_in_run

            with shown(total_bytes(snap)) as advance:
                return restore_in_run(
                    session, run, repo, snap, options.redis or RedisRestoreOptions(), advance
                )
        if options.redis is not None:
            raise UsageError("--redis-url and --rdb-file apply to Redis snapshots only")
        if snap.kind == "postgres.logical":
            logical = LogicalRestoreOptions(
                snapshot=options.snapshot,
                database=options.database,
                tables=options.tables,
                schemas=options.schemas,
                clean=options.clean,
                list_only=options.list_only,
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
    snap = repo.find_snapshot(snapshot)
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
    settings = _source_settings(session, snap)
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
    return LogicalRestoreResult(
        snapshot_id=snap.id,
        short_id=snap.short_id,
        database=done.database,
        created=done.created,
        row_counts=dict(done.row_counts),
        bytes_read=done.bytes_read,
        duration=done.duration,
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
