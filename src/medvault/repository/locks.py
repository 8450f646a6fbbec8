"""Repository locks: shared for writers that only add (backup, copy, check), exclusive for
those that must run alone (forget), and scoped locks that exclude only their own kind
(one prune, one key change, one hold change at a time) while backups go on.

A lock is an object `locks/<32 hex digits>`, named by a random id that is its identity, which
its holder rewrites every lease/6 seconds. Nothing here compares the clocks of two hosts.
Whether a lock still lives is judged either by the store's own clock (the modification time
the store gives each write, against the modification time of a lock written just now: a lock
not rewritten for longer than its lease plus a margin is stale) or, only for a holder in this
very PID namespace of this very boot, by whether its process still runs. Its holder, in turn,
stops trusting a lock it could not rewrite for lease - lease/6 seconds of its own monotonic
clock, so the two views never overlap.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from medvault import faults
from medvault.backends import Backend
from medvault.errors import ObjectNotFound, RepositoryLocked
from medvault.processes import gone, host_namespace, process_start
from medvault.repository import deletion

FOLDER = "locks"
LEASE = 30 * 60.0
MIN_LEASE = 1.0
MAX_LEASE = 24 * 3600.0  # a planted lock cannot claim to live for years
# A host clock further than this from the store's is reported as skewed.
CLOCK_TOLERANCE = 5 * 60.0
SCOPES = ("", "prune", "keys", "holds")
_LOCK_NAME = re.compile(rf"^{FOLDER}/[0-9a-f]{{32}}\Z")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _when(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "an impossible time"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


@dataclass(frozen=True)
class LockInfo:
    name: str
    exclusive: bool
    scope: str
    host: str
    namespace: str
    pid: int
    process_start: str
    user: str
    purpose: str
    created: float  # the holder's clock, for people to read
    refreshed: float  # the holder's clock at its last rewrite
    lease: float
    modified: float | None = None  # the store's clock at its last rewrite
    # The run (service layer) holding it, so a later command that finds it stale can record
    # that run as interrupted; "" in locks written before it existed, or outside a run.
    run_id: str = ""

    def conflicts_with(self, other: LockInfo) -> bool:
        return self.exclusive or other.exclusive or bool(self.scope and self.scope == other.scope)

    @property
    def process_gone(self) -> bool:
        """True only when we can tell: the holder ran in this boot and PID namespace and no
        process with its pid and start time runs any more."""
        if not self.namespace or self.namespace != host_namespace():
            return False
        return gone(self.pid, self.process_start)

    def age(self, store_now: float | None) -> float | None:
        """Seconds since the last rewrite, by the store's clock."""
        if store_now is None or self.modified is None:
            return None
        return store_now - self.modified

    def stale_reason(self, store_now: float | None) -> str | None:
        if self.process_gone:
            return "that process is no longer running"
        age = self.age(store_now)
        if age is None:
            # A store that gives no modification times: only the holder's clock remains.
            age = time.time() - self.refreshed
        if age > self.lease + self.lease / 6:
            return f"not refreshed for {_minutes(age)}"
        return None

    @property
    def clock_skew(self) -> float | None:
        """How far the holder's clock was from the store's when it last wrote (positive:
        ahead); None when within tolerance or unknown."""
        if self.modified is None:
            return None
        skew = self.refreshed - self.modified
        return skew if abs(skew) > CLOCK_TOLERANCE else None

    def describe(self, store_now: float | None = None) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        scope = f" {self.scope}" if self.scope else ""
        text = (
            f"{kind}{scope} lock by pid {self.pid} on {self.host} for {self.purpose} "
            f"since {_when(self.created)}"
        )
        reason = self.stale_reason(store_now)
        if reason:
            text += f" (stale: {reason})"
        skew = self.clock_skew
        if skew is not None:
            side = "ahead of" if skew > 0 else "behind"
            text += f" (the clock of {self.host} is {_minutes(abs(skew))} {side} the store's)"
        return text

    def to_json(self) -> bytes:
        doc = asdict(self)
        del doc["name"], doc["modified"]
        if not doc["run_id"]:
            del doc["run_id"]
        return json.dumps({"v": 2, **doc}).encode()


@dataclass(frozen=True)
class MalformedLock:
    """An object under locks/ that is not a lock this medvault can read: it holds nothing,
    and `unlock` removes it."""

    name: str
    reason: str

    def describe(self) -> str:
        return f"{self.name} is not a valid lock ({self.reason})"


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "exclusive": bool,
    "scope": str,
    "host": str,
    "namespace": str,
    "pid": int,
    "process_start": str,
    "user": str,
    "purpose": str,
    "created": (int, float),
    "refreshed": (int, float),
    "lease": (int, float),
}


def parse_lock(name: str, raw: bytes, modified: float | None) -> LockInfo:
    """A lock object, every field checked; ValueError naming what is wrong."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != 2:
        raise ValueError("unknown lock version")
    values: dict[str, Any] = {}
    for key, kind in _FIELDS.items():
        value = doc.get(key)
        # bool is an int in Python: a pid of `true` is not a pid.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError(f"field {key!r} is missing or of the wrong type")
        if kind == (int, float) and isinstance(value, int | float):
            # Times and leases are compared with float clocks: 10**400 is valid JSON, and
            # no float.
            try:
                value = float(value)
            except OverflowError:
                raise ValueError(f"field {key!r} is not a finite number") from None
            if not math.isfinite(value):
                raise ValueError(f"field {key!r} is not a finite number")
        values[key] = value
    if values["scope"] not in SCOPES:
        raise ValueError(f"unknown scope {values['scope']!r}")
    if not MIN_LEASE <= values["lease"] <= MAX_LEASE:
        raise ValueError(f"lease {values['lease']} s is out of range")
    if values["pid"] < 0:
        raise ValueError("negative pid")
    run_id = doc.get("run_id", "")
    if not isinstance(run_id, str):
        raise ValueError("field 'run_id' is of the wrong type")
    return LockInfo(name=name, modified=modified, run_id=run_id, **values)


@dataclass(frozen=True)
class LockTable:
    """Every object under locks/ at one moment, and the store's clock at that moment (the
    modification time of a lock written just before listing), when known."""

    locks: tuple[LockInfo, ...]
    malformed: tuple[MalformedLock, ...]
    store_now: float | None

    def live(self, exclude: Iterable[str] = ()) -> list[LockInfo]:
        skip = set(exclude)
        return [
            lock
            for lock in self.locks
            if lock.name not in skip and lock.stale_reason(self.store_now) is None
        ]

    def stale(self) -> list[LockInfo]:
        return [lock for lock in self.locks if lock.stale_reason(self.store_now) is not None]

    def find(self, name: str) -> LockInfo | None:
        return next((lock for lock in self.locks if lock.name == name), None)


def read_locks(backend: Backend, *, clock_from: str | None = None) -> LockTable:
    """List and parse locks. `clock_from`: the name of a lock this process has just written,
    whose modification time is the store's `now`."""
    locks: list[LockInfo] = []
    malformed: list[MalformedLock] = []
    store_now = None
    for obj in backend.list(FOLDER):
        if not _LOCK_NAME.match(obj.name):
            malformed.append(MalformedLock(obj.name, "not a lock's name"))
            continue
        try:
            raw = backend.load(obj.name)
        except ObjectNotFound:
            continue  # released while we listed
        try:
            lock = parse_lock(obj.name, raw, obj.modified)
        except ValueError as exc:
            malformed.append(MalformedLock(obj.name, str(exc)))
            continue
        locks.append(lock)
        if obj.name == clock_from:
            store_now = obj.modified
    return LockTable(tuple(locks), tuple(malformed), store_now)


def store_time(backend: Backend) -> float | None:
    """The store's clock now: a lock written and read back for that alone."""
    probe = RepositoryLock(backend, exclusive=False, purpose="reading the store's clock")
    probe.write()
    faults.point("lock.after-clock-probe")
    try:
        return read_locks(backend, clock_from=probe.name).store_now
    finally:
        deletion.lock(backend, probe.name)


class RepositoryLock:
    def __init__(
        self,
        backend: Backend,
        *,
        exclusive: bool,
        purpose: str,
        scope: str = "",
        lease: float = LEASE,
        on_acquired: Callable[[], None] | None = None,
        run_id: str = "",
    ) -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown lock scope {scope!r}")
        self._backend = backend
        now = time.time()
        self._info = LockInfo(
            name=f"{FOLDER}/{secrets.token_hex(16)}",
            exclusive=exclusive,
            scope=scope,
            host=socket.gethostname(),
            namespace=host_namespace(),
            pid=os.getpid(),
            process_start=process_start(os.getpid()),
            user=_user(),
            purpose=purpose,
            created=now,
            refreshed=now,
            lease=lease,
            run_id=run_id,
        )
        self._on_acquired = on_acquired
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._last_written = -math.inf  # monotonic time a successful write started
        self._lost = ""  # why this lock can no longer be trusted, once it cannot
        self.notes: list[str] = []  # stale or malformed locks seen while acquiring
        self.stale_seen: list[LockInfo] = []  # stale locks seen while acquiring

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def refresh_every(self) -> float:
        return self._info.lease / 6

    def write(self) -> None:
        """Write (or rewrite) the lock object now."""
        with self._write_lock:
            started = time.monotonic()
            self._info = replace(self._info, refreshed=time.time())
            self._backend.store(self.name, self._info.to_json(), overwrite=True)
            self._last_written = started

    def _past_budget(self, now: float) -> bool:
        """Whether others may already take this lock for stale (by our own clock)."""
        return now - self._last_written > self._info.lease - self.refresh_every

    def observe(self) -> LockTable:
        """Rewrite this lock, then read every lock with the store's clock of that moment."""
        self.write()
        return read_locks(self._backend, clock_from=self.name)

    def _refuse(self, conflicts: list[LockInfo], store_now: float | None) -> RepositoryLocked:
        return RepositoryLocked(f"repository is locked: {conflicts[0].describe(store_now)}")

    def acquire(self) -> None:
        self.write()
        faults.point("lock.after-write")
        # Two processes may write at once; both read after writing, so at least one sees the
        # other and neither proceeds unsafely (both may refuse).
        table = read_locks(self._backend, clock_from=self.name)
        conflicts = [
            lock for lock in table.live(exclude=[self.name]) if self._info.conflicts_with(lock)
        ]
        if conflicts:
            deletion.lock(self._backend, self.name)
            raise self._refuse(conflicts, table.store_now)
        self.notes = [
            f"{lock.describe(table.store_now)}; `medvault unlock` removes it"
            for lock in table.stale()
            if self._info.conflicts_with(lock)
        ] + [f"{bad.describe()}; `medvault unlock` removes it" for bad in table.malformed]
        self.stale_seen = table.stale()
        self._thread = threading.Thread(target=self._refresh, name="lock-refresh", daemon=True)
        self._thread.start()
        if self._on_acquired is not None:
            self._on_acquired()

    def _refresh(self) -> None:
        """Rewrite the lock while it can still be trusted. Never bring back a lock that others
        may have taken for stale and removed (after a long pause, or `unlock`): that would
        hide from this process that an exclusive operation or a prune may have run."""
        while not self._stop.wait(self.refresh_every):
            if self._past_budget(time.monotonic()):
                self._lost = "it could not be refreshed in time"
                return
            with contextlib.suppress(Exception):
                if not self._backend.exists(self.name):
                    self._lost = "it was removed while this operation ran"
                    return
                self.write()

    def ensure_held(self) -> None:
        """Before committing work (a snapshot, a deletion): the lock must still be ours and
        fresh. If rewriting it failed for too long, or someone removed it, others may take it
        for stale, and an exclusive operation or a prune may have run meanwhile."""
        if self._lost or self._past_budget(time.monotonic()):
            reason = self._lost or "it could not be refreshed in time"
            raise RepositoryLocked(
                f"lost the repository lock ({reason}); nothing was committed: run the "
                "operation again"
            )
        if not self._backend.exists(self.name):
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
        deletion.lock(self._backend, self.name)


@dataclass(frozen=True)
class UnlockResult:
    removed: list[str]  # descriptions
    remaining: list[str]
    stale: list[LockInfo] = field(default_factory=list)  # the stale locks removed


def remove_stale_locks(backend: Backend, *, remove_all: bool = False) -> UnlockResult:
    """Remove stale and malformed locks (every lock with remove_all), judged by the store's
    clock read just now."""
    store_now = store_time(backend)
    table = read_locks(backend)
    table = LockTable(table.locks, table.malformed, store_now)
    removed, remaining = [], []
    stale: list[LockInfo] = []
    for lock in table.locks:
        if lock.purpose == "reading the store's clock" and lock.stale_reason(store_now) is None:
            continue  # another unlock's probe
        if remove_all or lock.stale_reason(store_now) is not None:
            deletion.lock(backend, lock.name)
            removed.append(lock.describe(store_now))
            if lock.stale_reason(store_now) is not None:
                stale.append(lock)
            faults.point("unlock.after-remove")
        else:
            remaining.append(lock.describe(store_now))
    for bad in table.malformed:
        deletion.lock(backend, bad.name)
        removed.append(bad.describe())
    return UnlockResult(removed, remaining, stale)
