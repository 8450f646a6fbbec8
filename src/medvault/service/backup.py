"""Backups: files and directories, a PostgreSQL cluster (physical), one PostgreSQL database
(logical: all its tables or named ones, as pg_dump's archive or as one CSV per table).

`backup()` takes what a shell was asked ("back up these paths", "back up source emr with type
full") and chooses: a configured PostgreSQL source gets a physical backup (or a logical one of
one database), anything else the files pipeline. `backup_files`, `backup_physical` and
`backup_logical` are the same operations for a caller that knows the kind already. Each runs as
one "backup" run, and replicates its new snapshot to the repository's secondary when
medvault.toml says `replicate = true` (service/replication.py).

A snapshot saved with problems (unreadable files, damaged pages, a secondary that did not get
the copy) is returned, not raised: the run is recorded as incomplete and the shell decides how
to end (the CLI exits 3, or 22 when replication failed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from medvault.errors import ReplicationFailed, UsageError
from medvault.service.hooks import around

if TYPE_CHECKING:
    from medvault.config import PostgresCsvSourceSettings, PostgresSourceSettings
    from medvault.postgres.facts import ChecksumFailure, PhysicalFacts
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.service.redis import RedisBackupResult
    from medvault.service.runs import Run
    from medvault.service.session import Session
    from medvault.sources.files import BackupOptions as WalkOptions
    from medvault.sources.files import BackupResult as WalkResult
    from medvault.sources.files import DryRunResult, Problem
    from medvault.sources.stream import StreamDryRun

Progress: TypeAlias = Callable[[int], None] | None


class DryRunFigures(Protocol):
    """What every dry run of a source counts."""

    bytes_new: int
    bytes_added: int


# The same as sources.files.BACKUP_TYPES, which a shell need not import to check an option.
BACKUP_TYPES = ("full", "incremental", "differential")
METHODS = ("local", "stream")
DEFAULT_SOURCE = "files"  # the source name recorded for paths given without one


# -- options and results -------------------------------------------------------------------


@dataclass(frozen=True)
class BackupOptions:
    """What `medvault backup` is asked; see `backup()` for how it is read."""

    targets: tuple[str, ...] = ()  # paths, or the name of one source in medvault.toml
    source: str | None = None  # the source recorded (or a configured one)
    backup_type: str = "incremental"
    tags: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    logical: bool = False  # PostgreSQL: a pg_dump of one database instead of the cluster
    database: str | None = None  # PostgreSQL logical: the database (default: the DSN's)
    method: str = "local"  # PostgreSQL physical: local or stream
    verify_blobs: bool = True
    # PostgreSQL logical: open the repository before pg_dump starts rather than while it
    # reads its catalogs (a shell that may prompt for a passphrase wants the prompt first).
    open_repository_first: bool = False
    tables: tuple[str, ...] = ()  # PostgreSQL logical: pg_dump -t patterns
    exclude_tables: tuple[str, ...] = ()  # and -T patterns
    format: str | None = None  # PostgreSQL logical: custom or csv (None: the source's kind)


@dataclass(frozen=True)
class FilesBackupOptions:
    paths: tuple[str, ...] = ()  # none: the paths of the configured files source `source`
    source: str | None = None  # recorded name (default "files"), or a configured source
    backup_type: str = "incremental"
    tags: tuple[str, ...] = ()  # added to a configured source's own
    excludes: tuple[str, ...] = ()  # added to a configured source's own
    verify_blobs: bool = True


@dataclass(frozen=True)
class PhysicalBackupOptions:
    source: str  # a PostgreSQL source in medvault.toml
    backup_type: str = "incremental"
    method: str = "local"
    tags: tuple[str, ...] = ()  # added to the source's own


@dataclass(frozen=True)
class LogicalBackupOptions:
    source: str  # a PostgreSQL source in medvault.toml
    database: str | None = None
    tags: tuple[str, ...] = ()  # added to the source's own
    open_repository_first: bool = False
    # pg_dump -t / -T patterns: `tables` replaces the source's `tables`, `exclude_tables`
    # adds to its `exclude_tables`.
    tables: tuple[str, ...] = ()
    exclude_tables: tuple[str, ...] = ()
    # custom: pg_dump's archive; csv: one CSV per table (a postgres-csv source's only format);
    # None: the source's kind decides.
    format: str | None = None


@dataclass(frozen=True)
class Replication:
    """What became of a new snapshot's copy to the repository's secondary."""

    replicated_to: str | None = None  # the secondary that holds it now, if any
    error: str | None = None  # why it did not get there (the primary holds it)


@dataclass(frozen=True)
class FilesBackupResult:
    snapshot: Snapshot
    files_new: int
    files_changed: int
    files_unchanged: int
    dirs: int
    bytes_read: int
    bytes_added: int
    duration: float
    unreadable: tuple[Problem, ...] = ()
    changed_while_read: tuple[Problem, ...] = ()
    skipped: tuple[Problem, ...] = ()
    replication: Replication = Replication()
    hook_problem: str | None = None  # an after hook that failed (the snapshot is kept)

    @property
    def complete(self) -> bool:
        return not self.unreadable and not self.changed_while_read and self.hook_problem is None

    @classmethod
    def of(cls, walked: WalkResult, replication: Replication) -> FilesBackupResult:
        return cls(
            snapshot=walked.snapshot,
            files_new=walked.files_new,
            files_changed=walked.files_changed,
            files_unchanged=walked.files_unchanged,
            dirs=walked.dirs,
            bytes_read=walked.bytes_read,
            bytes_added=walked.bytes_added,
            duration=walked.duration,
            unreadable=tuple(walked.unreadable),
            changed_while_read=tuple(walked.changed_while_read),
            skipped=tuple(walked.skipped),
            replication=replication,
        )


@dataclass(frozen=True)
class PhysicalBackupResult:
    files: FilesBackupResult  # the walk of the data directory (or pg_basebackup's stream)
    facts: PhysicalFacts
    start_lsn: str  # as PostgreSQL writes them (0/2000028)
    stop_lsn: str
    checksum_failures: tuple[ChecksumFailure, ...] = ()
    # Said about the request itself, before the backup's own lines ("note: ...").
    notes: tuple[str, ...] = ()
    hook_problem: str | None = None  # an after hook that failed (the snapshot is kept)

    @property
    def snapshot(self) -> Snapshot:
        return self.files.snapshot

    @property
    def replication(self) -> Replication:
        return self.files.replication

    @property
    def complete(self) -> bool:
        return not self.checksum_failures and self.files.complete and self.hook_problem is None


@dataclass(frozen=True)
class LogicalBackupResult:
    snapshot: Snapshot
    database: str
    tables: int
    rows: int
    bytes_read: int
    bytes_added: int
    duration: float
    row_counts: dict[str, int] = field(default_factory=dict)  # as recorded with the dump
    replication: Replication = Replication()
    format: str = "custom"  # or csv
    hook_problem: str | None = None  # an after hook that failed (the snapshot is kept)

    @property
    def complete(self) -> bool:
        return self.hook_problem is None


BackupResult: TypeAlias = (
    "FilesBackupResult | PhysicalBackupResult | LogicalBackupResult | RedisBackupResult"
)


@dataclass(frozen=True)
class DryRunBackupResult:
    """What `backup --dry-run` found: what the backup would read and add, nothing written."""

    source: str
    backup_type: str  # as it would be taken (full when there is no parent)
    parent: str | None
    files_new: int
    files_changed: int
    files_unchanged: int
    dirs: int
    bytes_total: int  # every file of the backup, read or not
    bytes_read: int  # what it would read: new and changed files
    blobs_new: int
    bytes_new: int  # new to the repository after deduplication, before compression
    bytes_added: int  # what they would take in packs: compressed and sealed
    duration: float
    unreadable: tuple[Problem, ...] = ()
    skipped: tuple[Problem, ...] = ()
    kind: str = "files"  # or postgres.physical, postgres.logical, postgres.csv
    database: str | None = None  # logical: the database dumped, its tables and rows
    tables: int | None = None
    rows: int | None = None
    notes: tuple[str, ...] = ()  # what the figures leave out

    @classmethod
    def of_walk(cls, source: str, found: DryRunResult, **more: Any) -> DryRunBackupResult:
        """A dry run that walked files (a files source, or a data directory)."""
        return cls(
            source=source,
            backup_type=found.backup_type,
            parent=found.parent,
            files_new=found.files_new,
            files_changed=found.files_changed,
            files_unchanged=found.files_unchanged,
            dirs=found.dirs,
            bytes_total=found.bytes_total,
            bytes_read=found.bytes_read,
            blobs_new=found.blobs_new,
            bytes_new=found.bytes_new,
            bytes_added=found.bytes_added,
            duration=found.duration,
            skipped=tuple(found.skipped),
            **more,
        )

    @classmethod
    def of_stream(cls, source: str, found: StreamDryRun, **more: Any) -> DryRunBackupResult:
        """A dry run that read streams (a dump, CSV exports, an RDB): always full."""
        return cls(
            source=source,
            backup_type="full",
            parent=None,
            files_new=found.files,
            files_changed=0,
            files_unchanged=0,
            dirs=1,
            bytes_total=found.bytes_read,
            bytes_read=found.bytes_read,
            blobs_new=found.blobs_new,
            bytes_new=found.bytes_new,
            bytes_added=found.bytes_added,
            duration=found.duration,
            **more,
        )


# -- the operations ------------------------------------------------------------------------


def backup(session: Session, options: BackupOptions, on_progress: Progress = None) -> BackupResult:
    """Back up what a shell names: a source of medvault.toml (one target, or `source` and no
    targets) by its kind, else the paths given, recorded under `source` (default "files")."""
    with session.run("backup", source=options.source) as run:
        check_backup_type(options.backup_type)
        name = options.source
        targets = options.targets
        configured = session.configured_sources()
        if len(targets) == 1 and name is None and targets[0] in configured:
            name, targets = targets[0], ()
        run.source = name
        selective = options.tables or options.exclude_tables or options.format
        if name is not None and name in configured and not targets:
            settings = _postgres_settings_or_none(session, name)
            if _csv_settings_or_none(session, name) is not None or (
                settings is not None and options.logical
            ):
                logical = LogicalBackupOptions(
                    name,
                    options.database,
                    options.tags,
                    options.open_repository_first,
                    tables=options.tables,
                    exclude_tables=options.exclude_tables,
                    format=options.format,
                )
                return _logical(session, run, logical, on_progress)
            if settings is not None and selective:
                raise UsageError(
                    "--table, --exclude-table and --format apply to logical backups (--logical)"
                )
            if settings is None and _is_redis(session, name):
                from medvault.service.redis import RedisBackupOptions, backup_in_run

                return backup_in_run(
                    session, run, RedisBackupOptions(name, options.tags), on_progress
                )
            if settings is not None:
                physical = PhysicalBackupOptions(
                    name, options.backup_type, options.method, options.tags
                )
                return _physical(session, run, physical, on_progress)
        elif options.logical or options.database or selective:
            raise UsageError("--logical and --database need a PostgreSQL source from medvault.toml")
        files = FilesBackupOptions(
            paths=targets,
            source=name,
            backup_type=options.backup_type,
            tags=options.tags,
            excludes=options.excludes,
            verify_blobs=options.verify_blobs,
        )
        return _files(session, run, files, on_progress)


def backup_dry_run(
    session: Session, options: BackupOptions, on_progress: Progress = None
) -> DryRunBackupResult:
    """What `backup()` of the same request would read and add to the repository, from a walk
    that chunks and looks every blob up in the index and writes nothing (the run, "backup-dry-run",
    is kept by the catalog; the audit trail seals only one that failed). A logical backup
    runs its dump into a counting sink; a physical one (local method) walks the data
    directory without pg_backup_start, so its WAL is not counted; the stream method has no
    data directory to walk and is refused."""
    from medvault.sources.files import dry_run_files

    with session.run("backup-dry-run", source=options.source) as run:
        check_backup_type(options.backup_type)
        name, targets = options.source, options.targets
        if len(targets) == 1 and name is None and targets[0] in session.configured_sources():
            name, targets = targets[0], ()
        run.source = name
        selective = options.tables or options.exclude_tables or options.format
        if name is not None and not targets and name in session.configured_sources():
            from medvault.service.redis import dry_run_in_run, redis_settings

            if redis_settings(session, name) is not None:
                if options.logical or options.database or selective:
                    raise UsageError("--logical, --database and --table apply to PostgreSQL")
                return dry_run_in_run(session, run, name, on_progress)
            settings = _postgres_settings_or_none(session, name)
            if _csv_settings_or_none(session, name) is not None or (
                settings is not None and options.logical
            ):
                return _logical_dry_run(session, run, name, options, on_progress)
            if settings is not None and selective:
                raise UsageError(
                    "--table, --exclude-table and --format apply to logical backups (--logical)"
                )
            if settings is not None:
                return _physical_dry_run(session, run, name, options, on_progress)
        elif options.logical or options.database or selective:
            raise UsageError("--logical and --database need a PostgreSQL source from medvault.toml")
        files = FilesBackupOptions(
            paths=targets,
            source=name,
            backup_type=options.backup_type,
            tags=options.tags,
            excludes=options.excludes,
        )
        plan = _walk_options(session, files)
        run.source = plan.source
        repo = session.open(plan.source)
        run.repository = repo.url
        if repo.local_path:
            plan.skip_paths = (*plan.skip_paths, repo.local_path)
        found = dry_run_files(repo, plan, on_progress)
        _record_dry_run(run, found.backup_type, found.parent, found.bytes_read, found)
        return DryRunBackupResult.of_walk(
            plan.source, found, unreadable=(*found.unreadable, *found.changed_while_read)
        )


def _physical_dry_run(
    session: Session, run: Run, name: str, options: BackupOptions, on_progress: Progress
) -> DryRunBackupResult:
    from medvault.sources.postgres.physical import PhysicalSource
    from medvault.sources.postgres.physical_local import dry_run_physical

    settings = _postgres_settings(session, name)
    if options.method not in METHODS:
        raise UsageError(f"--method must be local or stream, not {options.method!r}")
    if options.method == "stream" or not settings.pgdata:
        raise UsageError(
            f"--dry-run of a physical backup walks the data directory: set "
            f"source.{name}.pgdata and use --method local (a streamed copy cannot be read "
            "without starting a base backup on the server)"
        )
    repo = session.open(name)
    run.repository = repo.url
    source = PhysicalSource(
        dsn=settings.dsn,
        pgdata=settings.pgdata,
        pg_bin=settings.pg_bin,
        checkpoint=settings.checkpoint,
        tier=settings.tier,
        archive_timeout_s=settings.archive_timeout_s,
    )
    found = dry_run_physical(repo, name, source, options.backup_type, on_progress)
    _record_dry_run(run, found.backup_type, found.parent, found.bytes_read, found)
    return DryRunBackupResult.of_walk(
        name,
        found,
        kind="postgres.physical",
        notes=(
            "the WAL that makes the copy consistent (from pg_backup_start to pg_backup_stop) "
            "and the backup label are not counted; pages were not checked",
        ),
    )


def _logical_dry_run(
    session: Session, run: Run, name: str, options: BackupOptions, on_progress: Progress
) -> DryRunBackupResult:
    from medvault.config import PostgresSourceSettings
    from medvault.sources.postgres.csv_export import dry_run_csv
    from medvault.sources.postgres.logical import dry_run_logical

    settings = _logical_settings(session, name)
    tables = options.tables or tuple(settings.tables)
    excludes = tuple(dict.fromkeys([*settings.exclude_tables, *options.exclude_tables]))
    csv = _logical_format(settings, options.format) == "csv"
    if csv and not tables:
        raise UsageError(
            f"a CSV export names its tables: --table PATTERN, or tables = [...] in [source.{name}]"
        )

    def open_repository() -> Repository:
        repo = session.open(name)
        run.repository = repo.url
        return repo

    repo = open_repository() if options.open_repository_first else open_repository
    if csv:
        found, database, exported = dry_run_csv(
            repo,
            source=name,
            dsn=settings.dsn,
            tables=tables,
            exclude_tables=excludes,
            database=options.database,
            on_progress=on_progress,
        )
        count, rows = len(exported), sum(e.rows for e in exported)
    else:
        assert isinstance(settings, PostgresSourceSettings)  # _logical_format said so
        dumped = dry_run_logical(
            repo,
            source=name,
            dsn=settings.dsn,
            database=options.database,
            pg_bin=settings.pg_bin,
            on_progress=on_progress,
            tables=tables,
            exclude_tables=excludes,
        )
        found, database, count, rows = dumped.stored, dumped.database, dumped.tables, dumped.rows
    _record_dry_run(run, "full", None, found.bytes_read, found)
    run.details["database"] = database
    return DryRunBackupResult.of_stream(
        name,
        found,
        kind="postgres.csv" if csv else "postgres.logical",
        database=database,
        tables=count,
        rows=rows,
    )


def _record_dry_run(
    run: Run, backup_type: str, parent: str | None, read: int, found: DryRunFigures
) -> None:
    run.add_bytes(read=read)
    run.details.update(
        dry_run=True,
        type=backup_type,
        parent=parent,
        bytes_new=found.bytes_new,
        bytes_added=found.bytes_added,
    )


def backup_files(
    session: Session, options: FilesBackupOptions, on_progress: Progress = None
) -> FilesBackupResult:
    """Back up paths, or a configured files source, into a new snapshot."""
    with session.run("backup", source=options.source) as run:
        return _files(session, run, options, on_progress)


def backup_physical(
    session: Session, options: PhysicalBackupOptions, on_progress: Progress = None
) -> PhysicalBackupResult:
    """A physical backup of a configured PostgreSQL source's cluster."""
    with session.run("backup", source=options.source) as run:
        return _physical(session, run, options, on_progress)


def backup_logical(
    session: Session, options: LogicalBackupOptions, on_progress: Progress = None
) -> LogicalBackupResult:
    """A pg_dump of one database of a configured PostgreSQL source."""
    with session.run("backup", source=options.source) as run:
        return _logical(session, run, options, on_progress)


def check_backup_type(backup_type: str) -> None:
    if backup_type not in BACKUP_TYPES:
        raise UsageError(f"--type must be one of {', '.join(BACKUP_TYPES)}, not {backup_type!r}")


# -- files -----------------------------------------------------------------------------------


def _files(
    session: Session, run: Run, options: FilesBackupOptions, on_progress: Progress
) -> FilesBackupResult:
    from medvault.sources.files import backup_files as walk

    check_backup_type(options.backup_type)
    plan = _walk_options(session, options)
    run.source = plan.source
    repo = session.open(plan.source)
    run.repository = repo.url
    if repo.local_path:
        # Backing up / (or any tree holding the repository) must not copy the repository
        # into itself, snapshot after snapshot.
        plan.skip_paths = (*plan.skip_paths, repo.local_path)
    with around(session, run, plan.source) as hooks:
        walked = walk(repo, plan, on_progress=on_progress)
        snap = walked.snapshot
        hooks.snapshot = snap.id
        _record(run, snap, read=walked.bytes_read, stored=walked.bytes_added)
        problems = [_unread(len(walked.unreadable) + len(walked.changed_while_read))]
        replication = _replicate(session, run, repo, snap.id, plan.source, problems)
    return replace(FilesBackupResult.of(walked, replication), hook_problem=hooks.after_failure)


def _walk_options(session: Session, options: FilesBackupOptions) -> WalkOptions:
    """The files pipeline's options: the paths given, or those of a configured source."""
    from medvault.config import FilesSourceSettings
    from medvault.sources.files import BackupOptions as WalkOptions

    verify = options.verify_blobs
    if options.paths:
        return WalkOptions(
            source=options.source or DEFAULT_SOURCE,
            paths=list(options.paths),
            backup_type=options.backup_type,
            tags=options.tags,
            excludes=options.excludes,
            verify=verify,
        )
    name = options.source
    if name is None or name not in session.configured_sources():
        raise UsageError("nothing to back up: give paths, or a source from medvault.toml")
    settings = session.settings.source[name]
    if not isinstance(settings, FilesSourceSettings):
        raise UsageError(
            f"source {name} is a {settings.kind} source, not a files source: back it up by name"
        )
    return WalkOptions(
        source=name,
        paths=list(settings.paths),
        backup_type=options.backup_type,
        tags=tuple(dict.fromkeys([*settings.tags, *options.tags])),
        excludes=tuple([*settings.exclude, *options.excludes]),
        tier=settings.tier,
        verify=verify,
    )


# -- PostgreSQL ------------------------------------------------------------------------------


def _physical(
    session: Session, run: Run, options: PhysicalBackupOptions, on_progress: Progress
) -> PhysicalBackupResult:
    from medvault.postgres.lsn import format_lsn
    from medvault.sources.postgres.physical import PhysicalSource
    from medvault.sources.postgres.physical_local import backup_physical as copy_locally
    from medvault.sources.postgres.physical_stream import backup_streamed

    name = options.source
    settings = _postgres_settings(session, name)
    check_backup_type(options.backup_type)
    if options.method not in METHODS:
        raise UsageError(f"--method must be local or stream, not {options.method!r}")
    repo = session.open(name)
    run.repository = repo.url
    tags = tuple(dict.fromkeys([*settings.tags, *options.tags]))
    # Sources read plain values, never medvault.toml's settings.
    source = PhysicalSource(
        dsn=settings.dsn,
        pgdata=settings.pgdata,
        pg_bin=settings.pg_bin,
        checkpoint=settings.checkpoint,
        tier=settings.tier,
        archive_timeout_s=settings.archive_timeout_s,
    )
    notes: list[str] = []
    with around(session, run, name) as hooks:
        if options.method == "local":
            result = copy_locally(repo, name, source, options.backup_type, tags, on_progress)
        else:
            if options.backup_type != "full":
                notes.append("note: --method stream always takes a full copy")
            result = backup_streamed(repo, name, source, tags, on_progress)
        walked, failures = result.files, tuple(result.checksum_failures)
        snap = walked.snapshot
        hooks.snapshot = snap.id
        _record(run, snap, read=walked.bytes_read, stored=walked.bytes_added)
        run.details["method"] = result.facts.method
        problems = [
            _unread(len(walked.unreadable) + len(walked.changed_while_read)),
            f"{len(failures)} relation file(s) have damaged pages" if failures else None,
        ]
        replication = _replicate(session, run, repo, snap.id, name, problems)
    return PhysicalBackupResult(
        files=FilesBackupResult.of(walked, replication),
        facts=result.facts,
        start_lsn=format_lsn(result.facts.start_lsn),
        stop_lsn=format_lsn(result.facts.stop_lsn),
        checksum_failures=failures,
        notes=tuple(notes),
        hook_problem=hooks.after_failure,
    )


def _logical(
    session: Session, run: Run, options: LogicalBackupOptions, on_progress: Progress
) -> LogicalBackupResult:
    from medvault.config import PostgresSourceSettings
    from medvault.postgres.facts import LogicalFacts
    from medvault.sources.postgres.logical import backup_logical as dump

    name = options.source
    settings = _logical_settings(session, name)
    tables = options.tables or tuple(settings.tables)
    excludes = tuple(dict.fromkeys([*settings.exclude_tables, *options.exclude_tables]))
    csv = _logical_format(settings, options.format) == "csv"
    if csv and not tables:
        raise UsageError(
            f"a CSV export names its tables: --table PATTERN, or tables = [...] in [source.{name}]"
        )
    if tables:
        run.details["tables"] = list(tables)
    if excludes:
        run.details["exclude_tables"] = list(excludes)
    opened: list[Repository] = []

    def open_repository() -> Repository:
        repo = session.open(name)
        opened.append(repo)
        run.repository = repo.url
        return repo

    tags = tuple(dict.fromkeys([*settings.tags, *options.tags]))
    with around(session, run, name) as hooks:
        # Opened once pg_dump runs, overlapping its catalog reads; or first, when asked.
        repo = open_repository() if options.open_repository_first else open_repository
        if csv:
            done = _csv(options, settings, tables, excludes, tags, repo, on_progress)
            snap = done.snapshot
            hooks.snapshot = snap.id
            _record(run, snap, read=done.bytes_read, stored=done.bytes_added)
            run.details["database"] = done.database
            run.details["format"] = "csv"
            replication = _replicate(session, run, opened[-1], snap.id, name, [])
        else:
            assert isinstance(settings, PostgresSourceSettings)  # _logical_format said so
            result = dump(
                repo,
                source=name,
                dsn=settings.dsn,
                database=options.database,
                pg_bin=settings.pg_bin,
                tags=tags,
                tier=settings.tier,
                on_progress=on_progress,
                tables=tables,
                exclude_tables=excludes,
            )
            snap = result.snapshot
            hooks.snapshot = snap.id
            _record(run, snap, read=result.bytes_read, stored=result.bytes_added)
            run.details["database"] = result.database
            replication = _replicate(session, run, opened[-1], snap.id, name, [])
    if csv:
        return replace(done, replication=replication, hook_problem=hooks.after_failure)
    return LogicalBackupResult(
        snapshot=snap,
        database=result.database,
        tables=result.tables,
        rows=result.rows,
        bytes_read=result.bytes_read,
        bytes_added=result.bytes_added,
        duration=result.duration,
        row_counts=dict(LogicalFacts.of(snap).row_counts),
        replication=replication,
        hook_problem=hooks.after_failure,
    )


def _csv(
    options: LogicalBackupOptions,
    settings: PostgresSourceSettings | PostgresCsvSourceSettings,
    tables: tuple[str, ...],
    excludes: tuple[str, ...],
    tags: tuple[str, ...],
    repo: Repository | Callable[[], Repository],
    on_progress: Progress,
) -> LogicalBackupResult:
    from medvault.sources.postgres.csv_export import export_csv

    result = export_csv(
        repo,
        source=options.source,
        dsn=settings.dsn,
        tables=tables,
        exclude_tables=excludes,
        database=options.database,
        tags=tags,
        tier=settings.tier,
        on_progress=on_progress,
    )
    return LogicalBackupResult(
        snapshot=result.snapshot,
        database=result.database,
        tables=len(result.exports),
        rows=result.rows,
        bytes_read=result.bytes_read,
        bytes_added=result.bytes_added,
        duration=result.duration,
        row_counts={t.key: t.rows for t in result.exports},
        format="csv",
    )


def _logical_format(
    settings: PostgresSourceSettings | PostgresCsvSourceSettings, wanted: str | None
) -> str:
    from medvault.config import PostgresCsvSourceSettings

    if wanted not in (None, "custom", "csv"):
        raise UsageError(f"--format must be custom or csv, not {wanted!r}")
    if isinstance(settings, PostgresCsvSourceSettings):
        if wanted == "custom":
            raise UsageError("a postgres-csv source is exported as CSV only")
        return "csv"
    return wanted or "custom"


def _csv_settings_or_none(session: Session, name: str) -> PostgresCsvSourceSettings | None:
    from medvault.config import PostgresCsvSourceSettings

    settings = session.settings.source.get(name)
    return settings if isinstance(settings, PostgresCsvSourceSettings) else None


def _logical_settings(
    session: Session, name: str
) -> PostgresSourceSettings | PostgresCsvSourceSettings:
    """A source a logical backup reads: postgres (pg_dump or CSV) or postgres-csv."""
    csv = _csv_settings_or_none(session, name) if name in session.configured_sources() else None
    return csv if csv is not None else _postgres_settings(session, name)


def _is_redis(session: Session, name: str) -> bool:
    from medvault.config import RedisSourceSettings

    return isinstance(session.settings.source.get(name), RedisSourceSettings)


def _postgres_settings_or_none(session: Session, name: str) -> PostgresSourceSettings | None:
    from medvault.config import PostgresSourceSettings

    settings = session.settings.source.get(name)
    return settings if isinstance(settings, PostgresSourceSettings) else None


def _postgres_settings(session: Session, name: str) -> PostgresSourceSettings:
    settings = (
        _postgres_settings_or_none(session, name) if name in session.configured_sources() else None
    )
    if settings is None:
        raise UsageError(f"source {name} is not a PostgreSQL source of medvault.toml")
    return settings


# -- what every backup records -------------------------------------------------------------


def _record(run: Run, snap: Snapshot, *, read: int, stored: int) -> None:
    run.touched(snap.id)
    run.add_bytes(read=read, stored=stored)
    run.details.update(kind=snap.kind, type=snap.backup_type, parent=snap.parent)


def _unread(count: int) -> str | None:
    return f"{count} file(s) could not be read consistently" if count else None


def _replicate(
    session: Session,
    run: Run,
    repo: Repository,
    snapshot_id: str,
    source: str,
    problems: list[str | None],
) -> Replication:
    """Replicate the new snapshot; then the run is incomplete for every problem met (those of
    the backup, and a replication that failed)."""
    from medvault.service.replication import replicate_snapshot

    try:
        secondary = replicate_snapshot(session, repo, snapshot_id, source)
        replication = Replication(replicated_to=secondary)
    except ReplicationFailed as exc:
        replication = Replication(error=str(exc))
    if replication.replicated_to is not None:
        run.details["replicated_to"] = replication.replicated_to
    met = [problem for problem in [*problems, replication.error] if problem]
    if met:
        run.incomplete("; ".join(met))
    return replication
