"""The WAL archive as operations: push (archive_command), fetch (restore_command) and the
archive's health (wal-status).

push and fetch run once per WAL file, so this module imports nothing heavy at module level,
reads medvault.toml through medvault.walconfig (tomllib alone for a plain setup) and opens the
repository through Session.open_target with the target that reader resolved: no pydantic,
no Typer. A push is a run like any other ("wal-push"): a failure reaches the session's
observers; an observer that keeps history should not keep one record per 16 MiB of WAL
pushed successfully.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from medvault.errors import MedvaultError, SourceUnavailable
from medvault.postgres.lsn import DEFAULT_SEGMENT_SIZE, check_name, is_archivable

if TYPE_CHECKING:
    from medvault.config import RepositorySettings
    from medvault.repository.wal import WalArchive
    from medvault.service.session import Session
    from medvault.sources.postgres.walstatus import TimelineSummary
    from medvault.walconfig import WalSettings


@dataclass(frozen=True)
class PushOptions:
    source: str  # the PostgreSQL source in medvault.toml
    path: str  # the WAL file (archive_command's %p)
    force_async: bool = False  # push every ready file in one batch (as wal_async = true)


@dataclass(frozen=True)
class PushResult:
    name: str  # the file PostgreSQL asked for: durable in the archive
    # Acknowledged from the spool: an earlier asynchronous call had pushed it ahead.
    from_spool: bool = False
    pushed_ahead: tuple[str, ...] = ()  # other ready files pushed in the same batch
    # Replication to the secondary is best effort: why it did not happen, if it did not.
    not_replicated: str | None = None


@dataclass(frozen=True)
class FetchResult:
    name: str
    found: bool  # False: not in the archive (the normal end of an archive recovery)


@dataclass(frozen=True)
class WalStatusReport:
    source: str
    system_identifier: str | None
    segment_size: int
    archiver: dict[str, Any] | None  # pg_stat_archiver and archive_mode, when asked
    archiver_error: str | None  # why the server could not be asked
    ready: int | None  # files marked ready to archive in pg_wal
    spooled: int | None  # pushed ahead, awaiting acknowledgement
    timelines: tuple[TimelineSummary, ...]
    problems: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        return not self.problems


# -- settings and the archive ----------------------------------------------------------------


def wal_settings(session: Session, source: str) -> WalSettings:
    """The light reader when it can, else the session's validated settings."""
    from medvault.walconfig import full_wal_settings, light_wal_settings

    light = light_wal_settings(session.config, session.repository, source)
    if light is not None:
        return light
    return full_wal_settings(session.settings, session.config, session.repository, source)


def open_archive(session: Session, wal: WalSettings, *, compress_threads: int = -1) -> WalArchive:
    from medvault.repository.wal import WalArchive
    from medvault.service.session import RepositoryTarget

    target = RepositoryTarget(
        wal.url,
        wal.repository,
        retention=wal.retention,
        secondary=wal.secondary,
        # RepoKeys carries key_file, password_file and password_command under the names
        # RepositorySettings gives them: all a credential source reads of a section.
        credential_keys=cast("RepositorySettings | None", wal.keys),
    )
    repo = session.open_target(target, source=wal.source)
    return WalArchive(repo, wal.source, compress_threads=compress_threads)


# -- the operations ----------------------------------------------------------------------------


def push(session: Session, options: PushOptions) -> PushResult:
    """archive_command: returns once the file is durable; raises MedvaultError otherwise."""
    from medvault.sources.postgres.wal import push_file

    with session.run("wal-push", source=options.source) as run:
        name = check_name(os.path.basename(options.path))
        wal = wal_settings(session, options.source)
        run.repository = wal.url
        ahead: list[str] = []
        if options.force_async or wal.wal_async:
            from medvault.sources.postgres.walspool import Spool, push_ready, ready_files

            spool = Spool(
                wal.wal_spool or Spool.default_path(options.path), options.source, wal.url
            )
            if spool.acknowledge(name, options.path):
                return PushResult(name, from_spool=True)
            # Several files go in parallel, each compressed on one thread; a lone one uses all.
            alone = len(ready_files(os.path.dirname(os.path.abspath(options.path)))) <= 1
            archive = open_archive(session, wal, compress_threads=-1 if alone else 0)
            batch = push_ready(archive, options.path, spool)
            pushed, ahead = batch.pushed, batch.spooled
            for failed, error in batch.failed.items():
                session.notes.append(f"{failed} not pushed ahead: {error}")
        else:
            archive = open_archive(session, wal)
            push_file(archive, options.path)
            pushed = [name]
        not_replicated = _replicate(session, wal, archive, pushed)
        if not_replicated is not None:
            run.incomplete(not_replicated)
        return PushResult(name, pushed_ahead=tuple(ahead), not_replicated=not_replicated)


def _replicate(
    session: Session, wal: WalSettings, archive: WalArchive, names: list[str]
) -> str | None:
    """Best effort: the files are safe in the primary, and PostgreSQL must not be held up
    (its WAL would pile up) while the second site is unreachable. Why it failed, if it did."""
    if wal.secondary is None or not wal.replicate or not names:
        return None
    from medvault.repository.copy import RepositoryCopier

    try:
        target = session.open(wal.source, wal.secondary, other=True, sharing=archive.repo)
        RepositoryCopier(archive.repo, target).copy_wal_files(wal.source, names)
    except MedvaultError as exc:
        return (
            f"{', '.join(names)} archived in the primary but not replicated "
            f"to {wal.secondary_url}: {exc}; `medvault copy` catches the secondary up"
        )
    return None


def fetch(session: Session, source: str, name: str, dest: str) -> FetchResult:
    """restore_command: write an archived file to `dest` (whole or not at all)."""
    from medvault.sources.postgres.wal import fetch_to

    with session.run("wal-fetch", source=source) as run:
        check_name(name)
        wal = wal_settings(session, source)
        run.repository = wal.url
        found = fetch_to(open_archive(session, wal), name, dest)
        run.details["found"] = found
        return FetchResult(name, found)


def wal_status(session: Session, source: str) -> WalStatusReport:
    """The archiver's health and the archive's segments per timeline, with any gaps."""
    from medvault.sources.postgres.walspool import SPOOL_DIR_NAME, Spool
    from medvault.sources.postgres.walstatus import archiver_stats, ready_count, summarize

    with session.run("wal-status", source=source) as run:
        wal = wal_settings(session, source)
        run.repository = wal.url
        archive = open_archive(session, wal)
        record = archive.cluster()
        segment_size = record.segment_size if record else DEFAULT_SEGMENT_SIZE
        timelines = tuple(summarize(archive, segment_size))
        archiver, archiver_error = None, None
        if wal.dsn:
            try:
                archiver = archiver_stats(wal.dsn)
            except SourceUnavailable as exc:
                archiver_error = str(exc)
        spool_path = wal.wal_spool or (
            os.path.join(wal.pgdata, "pg_wal", SPOOL_DIR_NAME) if wal.pgdata else None
        )
        problems = _problems(source, archive, timelines, archiver, archiver_error)
        run.details["problems"] = len(problems)
        return WalStatusReport(
            source=source,
            system_identifier=record.system_identifier if record else None,
            segment_size=segment_size,
            archiver=archiver,
            archiver_error=archiver_error,
            ready=ready_count(wal.pgdata),
            spooled=len(Spool(spool_path, source, wal.url).markers()) if spool_path else None,
            timelines=timelines,
            problems=tuple(problems),
        )


def _problems(
    source: str,
    archive: WalArchive,
    timelines: tuple[TimelineSummary, ...],
    archiver: dict[str, Any] | None,
    archiver_error: str | None,
) -> list[str]:
    problems = []
    for t in timelines:
        if t.missing:
            shown = ", ".join(t.missing[:5]) + (" ..." if len(t.missing) > 5 else "")
            problems.append(f"timeline {t.timeline}: {len(t.missing)} missing: {shown}")
    if archiver is not None and archiver["failing"]:
        problems.append(
            f"the archiver is failing: {archiver['last_failed_wal']} failed at "
            f"{archiver['last_failed_time']}; see the server log for wal-push's message"
        )
    last = archiver["last_archived_wal"] if archiver is not None else None
    if last is not None and is_archivable(last) and not archive.exists(last):
        problems.append(
            f"the server reports {last} archived but the archive of source {source} lacks it: "
            "does its archive_command name another source or repository?"
        )
    if archiver is not None and archiver["archive_mode"] == "off":
        problems.append("archive_mode is off: no WAL reaches the archive")
    if archiver_error is not None:
        problems.append(archiver_error)
    return problems
