"""PostgreSQL's WAL, as the archive sees it: waiting for segments, pushing and fetching
files, the asynchronous push spool, the archive's state per timeline, archiver statistics
and the retention of archived WAL. Names, LSNs and timelines are medvault.postgres's.

Imports stay light (no repository engine, no psycopg at import time): `wal-push` runs once
per segment and must start fast; a spooled segment is acknowledged before anything heavy
is loaded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medvault import faults
from medvault.errors import (
    IntegrityError,
    MedvaultError,
    RestoreTargetError,
    SourceUnavailable,
    WalConflict,
)
from medvault.postgres.facts import KIND_PHYSICAL, PhysicalFacts
from medvault.postgres.lsn import (
    BACKUP_LABEL,
    HISTORY,
    PARTIAL,
    SEGMENT,
    check_name,
    is_archivable,
    numbered_segment_name,
    segment_number,
    segment_start_lsn,
    segment_timeline,
)
from medvault.postgres.timelines import history_name
from medvault.postgres.walrecords import SegmentHeader, read_segment_header

if TYPE_CHECKING:
    from medvault.repository.repo import Repository
    from medvault.repository.wal import WalArchive

SPOOL_DIR_NAME = "medvault-spool"
ASYNC_BATCH = 64  # files per asynchronous call; the rest wait for the next call
ASYNC_WORKERS = 4

# -- one file ------------------------------------------------------------------------------


def check_cluster(
    archive: WalArchive,
    name: str,
    header: SegmentHeader,
    expected_system_identifier: str | None = None,
) -> None:
    """Refuse a segment of another cluster; the first segment pushed claims the archive."""
    ours = header.system_identifier
    if expected_system_identifier is not None and ours != expected_system_identifier:
        raise WalConflict(
            f"segment {name} comes from cluster {ours}, not from cluster "
            f"{expected_system_identifier} being backed up as source {archive.source}"
        )
    held = archive.cluster() or archive.record_cluster(ours, header.segment_size)
    if held.system_identifier != ours:
        raise WalConflict(
            f"segment {name} comes from cluster {ours} but the archive of source "
            f"{archive.source} holds cluster {held.system_identifier}; another cluster's "
            "archive_command points here: give that cluster its own source name"
        )
    if held.segment_size != header.segment_size:
        raise WalConflict(
            f"segment {name} is {header.segment_size} bytes but the archive of source "
            f"{archive.source} holds {held.segment_size}-byte segments"
        )


def read_wal_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise SourceUnavailable(f"cannot read WAL file {path}: {exc.strerror}") from None


def push_file(
    archive: WalArchive, path: str, *, expected_system_identifier: str | None = None
) -> bool:
    """Archive one file PostgreSQL hands to archive_command. True when stored now, False
    when an identical copy was archived already."""
    name = check_name(os.path.basename(path))
    data = read_wal_file(path)
    if SEGMENT.match(name) or PARTIAL.match(name):
        header = read_segment_header(name, data)
        check_cluster(archive, name, header, expected_system_identifier)
    return archive.push(name, data)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fetch_to(archive: WalArchive, name: str, dest_path: str) -> bool:
    """Write an archived file to dest_path (temp file + fsync + rename, so a reader never
    sees part of it). False, writing nothing, when it is not archived."""
    data = archive.fetch(check_name(name))
    if data is None:
        return False
    folder = os.path.dirname(os.path.abspath(dest_path))
    tmp = os.path.join(folder, f".{os.path.basename(dest_path)}.medvault-{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest_path)
        _fsync_dir(folder)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise RestoreTargetError(f"cannot write {dest_path}: {exc.strerror}") from None
    return True


# -- asynchronous push ---------------------------------------------------------------------


@dataclass
class Spool:
    """Markers of files pushed ahead of PostgreSQL asking: <spool>/<name> holds the identity
    (inode, size, mtime) of the file that was pushed, the source and the repository. Never
    WAL bytes. A call for a marked name whose file still has that identity is acknowledged
    at once and its marker removed; anything else is pushed again (identical: a no-op)."""

    path: str
    source: str
    repository: str

    @staticmethod
    def default_path(wal_path: str) -> str:
        """Next to the segments, in pg_wal: always writable by the archiver, never copied by a
        base backup (pg_basebackup and the backup API leave pg_wal's contents out)."""
        return os.path.join(os.path.dirname(os.path.abspath(wal_path)), SPOOL_DIR_NAME)

    def identity(self, wal_path: str) -> dict[str, Any]:
        st = os.stat(wal_path)
        return {
            "inode": st.st_ino,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "source": self.source,
            "repository": self.repository,
        }

    def acknowledge(self, name: str, wal_path: str) -> bool:
        marker = os.path.join(self.path, name)
        try:
            with open(marker, encoding="utf-8") as handle:
                recorded = json.load(handle)
            matches = recorded == self.identity(wal_path)
        except (OSError, ValueError):
            return False
        with contextlib.suppress(OSError):
            os.unlink(marker)
        return bool(matches)

    def record(self, name: str, identity: dict[str, Any]) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        marker = os.path.join(self.path, name)
        tmp = f"{marker}.tmp-{os.urandom(4).hex()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(identity, handle)
        os.replace(tmp, marker)

    def markers(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.path) if is_archivable(n))
        except FileNotFoundError:
            return []

    def prune(self, wal_dir: str) -> None:
        """Drop markers whose file PostgreSQL has since removed or recycled, and leftovers."""
        for entry in os.listdir(self.path) if os.path.isdir(self.path) else ():
            if not is_archivable(entry) or not os.path.exists(os.path.join(wal_dir, entry)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.path, entry))


@dataclass
class BatchResult:
    pushed: list[str] = field(default_factory=list)  # stored now or identical already
    spooled: list[str] = field(default_factory=list)
    failed: dict[str, MedvaultError] = field(default_factory=dict)


def ready_files(wal_dir: str) -> list[str]:
    """Names PostgreSQL has marked ready to archive, history files first (as it does)."""
    try:
        entries = os.listdir(os.path.join(wal_dir, "archive_status"))
    except FileNotFoundError:
        return []
    names = [e.removesuffix(".ready") for e in entries if e.endswith(".ready")]
    return sorted((n for n in names if is_archivable(n)), key=lambda n: (not HISTORY.match(n), n))


def push_ready(
    archive: WalArchive,
    wal_path: str,
    spool: Spool,
    *,
    batch: int = ASYNC_BATCH,
    workers: int = ASYNC_WORKERS,
    warn: Callable[[str], None] | None = None,
) -> BatchResult:
    """Push wal_path and up to batch-1 other ready files in parallel; mark the others in the
    spool once each is durable. Raises when wal_path itself could not be pushed."""
    from concurrent.futures import ThreadPoolExecutor

    wal_dir = os.path.dirname(os.path.abspath(wal_path))
    name = check_name(os.path.basename(wal_path))
    others = [n for n in ready_files(wal_dir) if n != name][: max(0, batch - 1)]
    spool.prune(wal_dir)
    result = BatchResult()

    def push_one(file_name: str) -> None:
        path = os.path.join(wal_dir, file_name)
        if file_name == name:
            push_file(archive, path)
            return
        identity = spool.identity(path)  # before reading: what was pushed is this file
        push_file(archive, path)
        faults.point("wal.spool.before-marker")
        spool.record(file_name, identity)
        faults.point("wal.spool.after-marker")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {n: pool.submit(push_one, n) for n in [name, *others]}
    for file_name, future in futures.items():
        exc = future.exception()
        if exc is None:
            (result.pushed if file_name == name else result.spooled).append(file_name)
        elif isinstance(exc, FileNotFoundError) and file_name != name:
            continue  # archived and removed meanwhile
        elif isinstance(exc, MedvaultError):
            result.failed[file_name] = exc
        elif isinstance(exc, OSError):
            result.failed[file_name] = SourceUnavailable(f"spool {spool.path}: {exc}")
        else:
            raise exc
    if name in result.failed:
        raise result.failed[name]
    for file_name, error in result.failed.items():
        if warn is not None:
            warn(f"medvault: warning: {file_name} not pushed ahead: {error}")
    return result


# -- status ----------------------------------------------------------------------------------


@dataclass
class TimelineSummary:
    timeline: int
    first: str | None
    last: str | None
    count: int
    missing: list[str]
    history: bool
    partial: list[str]
    backup_labels: int


def summarize(archive: WalArchive, segment_size: int) -> list[TimelineSummary]:
    """Per timeline: first, last and count of segments, and the gaps between them."""
    names = archive.names()
    timelines = sorted({segment_timeline(n) for n in names})
    summaries = []
    for tli in timelines:
        mine = [n for n in names if segment_timeline(n) == tli]
        segnos = sorted(segment_number(n, segment_size) for n in mine if SEGMENT.match(n))
        present = set(segnos)
        missing = (
            [
                numbered_segment_name(tli, s, segment_size)
                for s in range(segnos[0], segnos[-1] + 1)
                if s not in present
            ]
            if segnos
            else []
        )
        has_history = history_name(tli) in mine
        if tli > 1 and segnos and not has_history:
            missing.insert(0, history_name(tli))
        summaries.append(
            TimelineSummary(
                timeline=tli,
                first=numbered_segment_name(tli, segnos[0], segment_size) if segnos else None,
                last=numbered_segment_name(tli, segnos[-1], segment_size) if segnos else None,
                count=len(segnos),
                missing=missing,
                history=has_history,
                partial=[n for n in mine if PARTIAL.match(n)],
                backup_labels=sum(1 for n in mine if BACKUP_LABEL.match(n)),
            )
        )
    return summaries


ARCHIVER_COLUMNS = (
    "archived_count",
    "last_archived_wal",
    "last_archived_time",
    "failed_count",
    "last_failed_wal",
    "last_failed_time",
)


def archiver_stats(dsn: str) -> dict[str, Any]:
    """pg_stat_archiver, plus whether the archiver is failing now (its last attempt failed)."""
    from medvault.postgres.server import connect

    with connect(dsn) as conn:
        row = conn.execute(f"SELECT {', '.join(ARCHIVER_COLUMNS)} FROM pg_stat_archiver").fetchone()
        mode = conn.execute("SELECT current_setting('archive_mode')").fetchone()
    assert row is not None and mode is not None
    stats = dict(zip(ARCHIVER_COLUMNS, row, strict=True))
    failed, archived = stats["last_failed_time"], stats["last_archived_time"]
    stats["archive_mode"] = mode[0]
    stats["failing"] = failed is not None and (archived is None or failed > archived)
    return stats


def ready_count(pgdata: str | None) -> int | None:
    """The archiver's backlog when the data directory is on this host and readable."""
    if not pgdata:
        return None
    try:
        entries = os.listdir(os.path.join(pgdata, "pg_wal", "archive_status"))
    except OSError:
        return None
    return sum(1 for e in entries if e.endswith(".ready"))


# -- retention -------------------------------------------------------------------------------


@dataclass
class WalPruneResult:
    deleted: int = 0
    freed_bytes: int = 0
    kept_locked: int = 0
    notes: list[str] = field(default_factory=list)


def prune_wal(
    repo: Repository,
    windows: dict[str, dt.timedelta],
    *,
    young: dt.timedelta,
    dry_run: bool = False,
) -> WalPruneResult:
    """Remove archived WAL segments no retained physical backup and no PITR window needs.

    Per source: a segment goes only when it ends before the start of the oldest retained
    physical backup of that source (recovery replays from a backup's start onward, on
    whatever timeline), and it was archived longer ago than the source's `pitr_window` (and
    the safety margin `young`, which protects the WAL of a backup still running). History
    files, backup labels and the cluster record are kept: they are small, and recovery
    reads them. With no physical backup retained nothing is removed: a first backup may be
    on its way."""
    from medvault.errors import ObjectLocked, ObjectNotFound

    result = WalPruneResult()
    now = time.time()
    physical: list[tuple[str, PhysicalFacts | None]] = []
    for snap in repo.list_snapshots():
        if snap.kind == KIND_PHYSICAL:
            try:
                physical.append((snap.source, PhysicalFacts.of(snap)))
            except IntegrityError as exc:
                physical.append((snap.source, None))
                result.notes.append(f"{snap.source}: {exc}; its WAL is kept")
    sources = sorted({o.name.split("/")[1] for o in repo.backend.list("wal") if "/" in o.name})
    for source in sources:
        found = [facts for name, facts in physical if name == source]
        own = [facts for facts in found if facts is not None]
        if not found:
            result.notes.append(f"{source}: no physical backup retained; its WAL is kept")
            continue
        if len(own) < len(found):
            continue  # where a retained backup's WAL starts cannot be told
        cutoff = min(facts.start_lsn for facts in own)
        size = own[0].wal_segment_size
        keep_newer = now - max(windows.get(source, dt.timedelta(0)), young).total_seconds()
        for obj in repo.backend.list(f"wal/{source}"):
            name = obj.name.rsplit("/", 1)[1]
            if not (SEGMENT.match(name) or PARTIAL.match(name)):
                continue
            if obj.modified is None or obj.modified > keep_newer:
                continue
            if segment_start_lsn(name[:24], size) + size > cutoff:
                continue
            if dry_run:
                result.deleted += 1
                result.freed_bytes += obj.size
                continue
            try:
                repo.backend.delete(obj.name)
            except ObjectNotFound:
                continue
            except ObjectLocked:
                result.kept_locked += 1
                continue
            result.deleted += 1
            result.freed_bytes += obj.size
    return result
