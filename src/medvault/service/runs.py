"""Every operation reports itself in one place: a run.

A shell (the CLI, later the HTTP API and the scheduler) says who runs an operation (a
`Caller`); the operation, inside `Session.run(...)`, notes what it read, stored and restored
and which snapshots it touched on its `Run`; when it ends, successfully or not, one
`RunRecord` goes to every `RunObserver` of the session. Run history, audit, metrics and
alerts attach there as observers, never inside a command.

Every wal-push makes a Run, and its start-up is what a push costs: the records are NamedTuples
and `Run` a plain slotted class, because a dataclass costs ten times more to define on import
(measured: `python bench/ab_trees.py`, wal-push).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Protocol

from medvault.errors import (
    MedvaultError,
    ObjectLocked,
    RepositoryLocked,
    UsageError,
    first_line,
)

Status = Literal["ok", "failed", "incomplete", "refused"]
SHELLS = ("cli", "api", "scheduler")


class Caller(NamedTuple):
    """Who runs an operation, from which shell, on which host."""

    user: str
    shell: str
    host: str

    @classmethod
    def this_process(cls, shell: str) -> Caller:
        """The OS user of this process, on this host."""
        import getpass

        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        return cls(user=user, shell=shell, host=os.uname().nodename)


class RunRecord(NamedTuple):
    """One operation as it ran: what, by whom, when, with what result."""

    run_id: str
    operation: str
    source: str | None
    repository: str | None
    started: str  # ISO 8601, UTC
    ended: str
    duration_s: float
    status: Status
    bytes_read: int
    bytes_stored: int
    bytes_restored: int
    snapshots: tuple[str, ...]
    error: str | None  # the first line of what stopped it
    user: str
    host: str
    shell: str
    # What an auditor asks of this kind of operation (a restore's target and reason, a
    # prune's counts): plain JSON values.
    details: dict[str, Any]
    # The audit fields (HIPAA §164.312(b)): answered from the record itself.
    destination: str | None = None  # where data went: a restore's target, a copy's repository
    data_classification: str | None = None  # of the source (or its tier): "phi", "pii", …
    encryption: str | None = None  # how the repository it touched protects data at rest
    retention_policy: str | None = None  # the source's tier and rules
    compliance_flags: tuple[str, ...] = ()  # regimes of the source or tier: "hipaa", "gdpr"
    recovery_point: str | None = None  # restores: the moment restored (snapshot time, target)
    justification: str | None = None  # restores: why (`--reason`)
    approver: str | None = None  # restores: who approved (the approval flow fills it)

    @property
    def timestamp(self) -> str:
        """When it happened, for an auditor: when it ended."""
        return self.ended


class RunObserver(Protocol):
    def run_ended(self, record: RunRecord) -> None: ...


class Run:
    """The record an operation fills in while it runs."""

    __slots__ = (
        "bytes_read",
        "bytes_restored",
        "bytes_stored",
        "caller",
        "destination",
        "details",
        "failed_because",
        "incomplete_because",
        "justification",
        "operation",
        "recovery_point",
        "repository",
        "run_id",
        "snapshots",
        "source",
    )

    def __init__(
        self,
        operation: str,
        caller: Caller,
        source: str | None = None,
        repository: str | None = None,
    ) -> None:
        self.operation = operation
        self.caller = caller
        self.source = source
        self.repository = repository
        self.run_id = os.urandom(8).hex()  # not secrets/socket: imports cost on every push
        self.bytes_read = 0
        self.bytes_stored = 0
        self.bytes_restored = 0
        self.snapshots: list[str] = []
        self.details: dict[str, Any] = {}
        self.incomplete_because: str | None = None
        self.failed_because: str | None = None
        self.destination: str | None = None
        self.recovery_point: str | None = None
        self.justification: str | None = None

    def add_bytes(self, *, read: int = 0, stored: int = 0, restored: int = 0) -> None:
        self.bytes_read += read
        self.bytes_stored += stored
        self.bytes_restored += restored

    def touched(self, snapshot_id: str) -> None:
        if snapshot_id not in self.snapshots:
            self.snapshots.append(snapshot_id)

    def incomplete(self, reason: str) -> None:
        """It ended and kept what it did, but not all it was asked (unreadable files)."""
        self.incomplete_because = reason

    def fail(self, reason: str) -> None:
        """It ran to its end and found what it exists to find: damage (a check, a drill).
        The shell still gets the whole result to show; the record says failed."""
        self.failed_because = reason

    def record(
        self,
        started: float,
        status: Status,
        error: str | None,
        audit: dict[str, Any] | None = None,
    ) -> RunRecord:
        """`audit`: the fields the session knows from the configuration (classification,
        compliance flags, retention policy, encryption)."""
        ended = time.time()
        return RunRecord(
            run_id=self.run_id,
            operation=self.operation,
            source=self.source,
            repository=self.repository,
            started=_iso(started),
            ended=_iso(ended),
            duration_s=round(ended - started, 3),
            status=status,
            bytes_read=self.bytes_read,
            bytes_stored=self.bytes_stored,
            bytes_restored=self.bytes_restored,
            snapshots=tuple(self.snapshots),
            error=error if error is not None else self.failed_because or self.incomplete_because,
            user=self.caller.user,
            host=self.caller.host,
            shell=self.caller.shell,
            details=dict(self.details),
            destination=self.destination,
            recovery_point=self.recovery_point,
            justification=self.justification,
            **(audit or {}),
        )


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def status_of(exc: BaseException | None, run: Run) -> Status:
    """`refused`: the operation did not start its work, for a reason it names (bad input, a
    lock, an immutable object); `failed`: anything else that stopped it."""
    if exc is None:
        if run.failed_because is not None:
            return "failed"
        return "incomplete" if run.incomplete_because is not None else "ok"
    if isinstance(exc, UsageError | RepositoryLocked | ObjectLocked):
        return "refused"
    return "failed"


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, MedvaultError):
        return first_line(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"internal error: {type(exc).__name__}: {first_line(exc)}"


@contextlib.contextmanager
def running(
    operation: str,
    caller: Caller,
    observers: list[RunObserver],
    warnings: list[str],
    *,
    source: str | None = None,
    repository: str | None = None,
    audit_fields: Callable[[Run, Status], dict[str, Any]] | None = None,
) -> Iterator[Run]:
    """Run an operation; its record goes to every observer however it ends. An observer that
    fails costs a warning, never the operation's own result. `audit_fields` gives the audit
    fields the caller knows (from the configuration) for the run as it ended."""
    run = Run(operation, caller, source=source, repository=repository)
    started = time.time()

    def finish(status: Status, error: str | None) -> RunRecord:
        try:
            audit = audit_fields(run, status) if audit_fields is not None else None
        except Exception as exc:  # a broken configuration must not lose the record
            warnings.append(f"the audit fields of this {operation} are missing: {first_line(exc)}")
            audit = None
        return run.record(started, status, error, audit)

    try:
        yield run
    except BaseException as exc:
        _tell(observers, finish(status_of(exc, run), _error_line(exc)), warnings)
        raise
    _tell(observers, finish(status_of(None, run), None), warnings)


def _tell(observers: list[RunObserver], record: RunRecord, warnings: list[str]) -> None:
    for observer in observers:
        try:
            observer.run_ended(record)
        except Exception as exc:  # a broken observer must not turn a success into a failure
            warnings.append(
                f"the record of this {record.operation} could not be kept by "
                f"{type(observer).__name__}: {first_line(exc)}"
            )
