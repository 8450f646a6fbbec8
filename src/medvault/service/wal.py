"""The WAL archive as operations: push (archive_command) and fetch (restore_command); the
archive's health is in walstatus.py.

push and fetch run once per WAL file, so this module imports nothing heavy at module level,
reads medvault.toml through medvault.walconfig (tomllib alone for a plain setup) and opens the
repository through Session.open_target with the target that reader resolved: no pydantic,
no Typer. Options and results are NamedTuples rather than frozen dataclasses: as immutable
and typed, and their classes, built on every wal-push, cost a tenth. A push is a run like any
other ("wal-push"): a failure reaches the session's observers; an observer that keeps
history should not keep a record of each of the pushes that succeed (one per 16 MiB of WAL).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple, cast

from medvault.errors import MedvaultError
from medvault.postgres.lsn import check_name, is_archivable

if TYPE_CHECKING:
    from medvault.config import RepositorySettings
    from medvault.repository.wal import WalArchive
    from medvault.service.session import Session
    from medvault.walconfig import WalSettings


class PushOptions(NamedTuple):
    source: str  # the PostgreSQL source in medvault.toml
    path: str  # the WAL file (archive_command's %p)
    force_async: bool = False  # push every ready file in one batch (as wal_async = true)


class PushResult(NamedTuple):
    name: str  # the file PostgreSQL asked for: durable in the archive
    # Acknowledged from the spool: an earlier asynchronous call had pushed it ahead.
    from_spool: bool = False
    pushed_ahead: tuple[str, ...] = ()  # other ready files pushed in the same batch
    # Replication to the secondary is best effort: why it did not happen, if it did not.
    not_replicated: str | None = None


class FetchResult(NamedTuple):
    name: str
    found: bool  # False: not in the archive (the normal end of an archive recovery)


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


def acknowledged(wal: WalSettings, options: PushOptions) -> bool:
    """True when an earlier asynchronous call pushed this very file ahead (its marker in the
    spool matches): it is durable, and nothing else is to be done. Needs no session: with
    wal_async most calls end here, so they load neither the session nor the repository
    machinery (and leave no record: they succeed). False, changing nothing, when not so."""
    if not (options.force_async or wal.wal_async):
        return False
    from medvault.sources.postgres.walspool import Spool

    name = os.path.basename(options.path)
    if not is_archivable(name):
        return False  # push() refuses it, and its run records why
    spool = Spool(wal.wal_spool or Spool.default_path(options.path), options.source, wal.url)
    return spool.acknowledge(name, options.path)


def push(session: Session, options: PushOptions, *, wal: WalSettings | None = None) -> PushResult:
    """archive_command: returns once the file is durable; raises MedvaultError otherwise.
    `wal`: the settings, when the shell read them already (to ask `acknowledged` first)."""
    from medvault.sources.postgres.wal import push_file

    with session.run("wal-push", source=options.source) as run:
        name = check_name(os.path.basename(options.path))
        wal = wal or wal_settings(session, options.source)
        run.repository = wal.url
        ahead: list[str] = []
        if options.force_async or wal.wal_async:
            from medvault.sources.postgres.walspool import Spool, push_ready, ready_files

            spool = Spool(
                wal.wal_spool or Spool.default_path(options.path), options.source, wal.url
            )
            if spool.acknowledge(name, options.path):
                run.details["pushed"] = 0  # counted when it was pushed ahead
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
        # Files stored by this call, counted per hour by the audit observer.
        run.details["pushed"] = len(pushed) + len(ahead)
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
