"""Repository locks: shared for writers that only add (backup, wal-push), exclusive for
those that delete or rewrite (prune, key rotation). A lock is an object under locks/ that
its holder refreshes; it is stale when expired, or when its process is gone on this host."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from medvault.backends import Backend
from medvault.errors import ObjectNotFound, RepositoryLocked

LOCK_TTL = 30 * 60.0
REFRESH_EVERY = 5 * 60.0


def _process_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass(frozen=True)
class LockInfo:
    name: str
    exclusive: bool
    host: str
    pid: int
    process_start: str
    user: str
    purpose: str
    created: float
    refreshed: float

    @property
    def expired(self) -> bool:
        return time.time() > self.refreshed + LOCK_TTL

    @property
    def process_gone(self) -> bool:
        """True only when we can tell: the holder ran on this host and is no longer running."""
        if self.host != socket.gethostname():
            return False
        return _process_start(self.pid) != self.process_start

    @property
    def stale(self) -> bool:
        return self.expired or self.process_gone

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        since = datetime.fromtimestamp(self.created, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        state = ""
        if self.process_gone:
            state = " (stale: that process is no longer running)"
        elif self.expired:
            state = " (stale: not refreshed for 30 minutes)"
        return (
            f"{kind} lock by pid {self.pid} on {self.host} for {self.purpose} since {since}{state}"
        )


def list_locks(backend: Backend) -> list[LockInfo]:
    locks = []
    for obj in backend.list("locks"):
        try:
            doc = json.loads(backend.load(obj.name))
            locks.append(LockInfo(name=obj.name, **doc))
        except (ObjectNotFound, ValueError, TypeError):
            continue  # removed while listing, or half a lock: neither holds anything
    return locks


class RepositoryLock:
    def __init__(self, backend: Backend, *, exclusive: bool, purpose: str) -> None:
        self._backend = backend
        self._info = LockInfo(
            name=f"locks/{secrets.token_hex(16)}",
            exclusive=exclusive,
            host=socket.gethostname(),
            pid=os.getpid(),
            process_start=_process_start(os.getpid()),
            user=os.environ.get("USER", str(os.getuid())),
            purpose=purpose,
            created=time.time(),
            refreshed=time.time(),
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_refreshed = time.monotonic()

    def _write(self) -> None:
        doc = asdict(self._info)
        del doc["name"]
        self._backend.store(self._info.name, json.dumps(doc).encode(), overwrite=True)

    def _conflicts(self) -> list[LockInfo]:
        return [
            lock
            for lock in list_locks(self._backend)
            if lock.name != self._info.name
            and not lock.expired
            and (self._info.exclusive or lock.exclusive)
        ]

    def _refuse(self, conflicts: list[LockInfo]) -> RepositoryLocked:
        first = conflicts[0]
        hint = "; run `medvault unlock` to remove stale locks" if first.stale else ""
        return RepositoryLocked(f"repository is locked: {first.describe()}{hint}")

    def acquire(self) -> None:
        conflicts = self._conflicts()
        if conflicts:
            raise self._refuse(conflicts)
        self._write()
        # Two processes may pass the first check at once; re-check after writing our own.
        conflicts = self._conflicts()
        if conflicts:
            self._backend.delete(self._info.name)
            raise self._refuse(conflicts)
        self._thread = threading.Thread(target=self._refresh, name="lock-refresh", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            self._info = LockInfo(**{**asdict(self._info), "refreshed": time.time()})
            with contextlib.suppress(Exception):
                self._write()
                self._last_refreshed = time.monotonic()

    def ensure_held(self) -> None:
        """Before committing work (a snapshot): the lock must still be ours and fresh. If
        refreshing failed for too long, or someone removed it, an exclusive operation such
        as prune may have run meanwhile and deleted data this work relies on."""
        if time.monotonic() - self._last_refreshed > LOCK_TTL - REFRESH_EVERY:
            raise RepositoryLocked(
                "lost the repository lock (it could not be refreshed); "
                "nothing was committed: run the operation again"
            )
        if not self._backend.exists(self._info.name):
            raise RepositoryLocked(
                "the repository lock was removed while this operation ran "
                "(medvault unlock --remove-all?); nothing was committed"
            )

    def __enter__(self) -> RepositoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(ObjectNotFound):
            self._backend.delete(self._info.name)


def remove_stale_locks(backend: Backend, *, remove_all: bool = False) -> list[LockInfo]:
    removed = []
    for lock in list_locks(backend):
        if remove_all or lock.stale:
            with contextlib.suppress(ObjectNotFound):
                backend.delete(lock.name)
            removed.append(lock)
    return removed
