"""The asynchronous push (`wal_async`): one call pushes every file PostgreSQL has marked
ready, in parallel, and leaves a marker per file pushed ahead, so the following
archive_command calls are acknowledged from their marker before anything heavy is loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medvault import faults
from medvault.errors import MedvaultError, SourceUnavailable
from medvault.postgres.lsn import HISTORY, check_name, is_archivable
from medvault.sources.postgres.wal import push_file

if TYPE_CHECKING:
    from medvault.repository.wal import WalArchive


SPOOL_DIR_NAME = "medvault-spool"
ASYNC_BATCH = 64  # files per asynchronous call; the rest wait for the next call
ASYNC_WORKERS = 4


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
