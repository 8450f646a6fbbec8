"""Runs become audit records; the audit trail is verified and exported.

`AuditObserver` is the run observer every shell attaches: each RunRecord is sealed into the
audit chain of the repository the run touched (repository/audit.py), as one PUT. A run that
ended before any repository was opened (a wrong passphrase, a missing repository, bad
options) is kept in the state directory's `outbox/` (one 0600 JSON file each, naming the
repository it was meant for) and sealed by the next session that opens that repository.

A wal-push that succeeds is not recorded by itself (one per 16 MiB of WAL, and each must stay
within milliseconds): it adds to a counter of its (repository, source, hour) in the state
directory, and one "wal-push-count" record per source and hour is sealed once the hour has
passed, by the next push or any other run that opens the repository. Its failures are runs
like any other. A wal-fetch that succeeds leaves no record (a recovery fetches thousands;
the restore or drill driving it is recorded); its failures do.

This module is imported on every wal-push: nothing heavy at module level.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from medvault.errors import AuditTrailBroken, MedvaultError, UsageError

if TYPE_CHECKING:
    import datetime as dt

    from medvault.repository.audit import AuditEntry, AuditLog, AuditReport
    from medvault.repository.repo import Repository
    from medvault.service.runs import RunRecord
    from medvault.service.session import Session

OUTBOX = "outbox"
COUNTS = "wal-push-counts"
# Runs recorded as counts when they succeed, and not at all when they succeed.
COUNTED = "wal-push"
# A dry run must leave the repository as it found it: its success is the catalog's to keep.
UNRECORDED_SUCCESSES = ("wal-fetch", "backup-dry-run")


def record_doc(record: RunRecord) -> dict[str, Any]:
    """A run record as the audit trail keeps it: every field, and its timestamp."""
    doc = record._asdict()
    doc["timestamp"] = record.timestamp
    return doc


class AuditObserver:
    """Seals every run of a session into the audit trail (see the module's docstring). A
    plain class: it is built on every wal-push."""

    seals_audit = True  # the session has snapshots name the audit chain's head

    def __init__(self, session: Session) -> None:
        self.session = session

    def run_ended(self, record: RunRecord) -> None:
        if record.status == "ok" and record.operation == COUNTED:
            self._count_push(record)
            return
        if record.status == "ok" and record.operation in UNRECORDED_SUCCESSES:
            return
        url = record.repository if record.repository is not None else self._target_url(record)
        repo = self.session.opened_repository(url) if url is not None else None
        if repo is None:
            keep_in_outbox(self._state_dir(), record, url)
            return
        try:
            seal_pending(self.session, repo)
        except MedvaultError as exc:  # they wait for the next session; this run goes on
            self.session.notes.append(f"audit records in waiting stay in waiting: {exc}")
        if repo.stale_locks:
            try:
                seal_interrupted(self.session, repo, record)
            except MedvaultError as exc:  # the next command that finds the lock tries again
                self.session.notes.append(f"an interrupted run could not be recorded: {exc}")
        try:
            audit_log(self.session, repo).append("run", record_doc(record))
        except MedvaultError:
            # The store refused (unreachable, read-only): kept here for the next session.
            keep_in_outbox(self._state_dir(), record, repo.url)
            raise

    def _state_dir(self) -> Path:
        if self.session.state_dir is None:
            raise UsageError("no repository was opened and there is no state directory")
        return self.session.state_dir

    def _target_url(self, record: RunRecord) -> str | None:
        """The repository a run that never named one was meant for, when the configuration
        says (a run refused before it chose one)."""
        try:
            return self.session.repository_target(record.source)[0]
        except Exception:  # no configuration, or a broken one: the record says why
            return None

    def _count_push(self, record: RunRecord) -> None:
        state = self.session.state_dir
        if state is None or record.repository is None or record.source is None:
            return
        pushed = int(record.details.get("pushed", 1))
        if pushed:
            count_push(state, record.repository, record.source, pushed)
        repo = self.session.opened_repository(record.repository)
        if repo is not None and (counts_due(state) or outbox_waiting(state)):
            seal_pending(self.session, repo)


def audit_log(session: Session, repo: Repository) -> AuditLog:
    """The audit trail of `repo`, written as the session's host, with the audit retention
    where the store locks objects."""
    from medvault.repository.audit import AuditLog

    retention = None
    if repo.lock_enabled:
        try:
            retention = session.audit_retention()
        except MedvaultError:  # a broken medvault.toml: the repository's own period
            retention = None
    return AuditLog(repo, session.caller.host, retention=retention, state_dir=session.state_dir)


# -- the outbox: runs that ended before a repository was open ---------------------------------


def keep_in_outbox(state_dir: Path, record: RunRecord, url: str | None) -> Path:
    """One 0600 JSON file: the record, and the repository it was meant for (None: the next
    repository any session opens takes it)."""
    import json

    from medvault.statedir import ensure_state_dir

    box = ensure_state_dir(state_dir / OUTBOX)
    path = box / f"{record.ended.replace(':', '')}-{record.run_id}.json"
    doc = record_doc(record)
    if doc["repository"] is None:
        doc["repository"] = url  # the one it was meant for, as the configuration says
    payload = json.dumps({"repository": url, "record": doc}, default=str)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, payload.encode())
    finally:
        os.close(fd)
    return path


def outbox_waiting(state_dir: Path) -> bool:
    try:
        return any(True for _ in os.scandir(state_dir / OUTBOX))
    except OSError:
        return False


def _seal_outbox(log: AuditLog, state_dir: Path, url: str) -> int:
    """Seal the outbox's records meant for `url` (or for no repository in particular),
    oldest first, each removed once sealed. Another session sealing the same file at once
    is stopped by claiming it with a rename first."""
    import json

    from medvault.service.session import _local_form

    box = state_dir / OUTBOX
    try:
        names = sorted(p.name for p in os.scandir(box) if p.name.endswith(".json"))
    except OSError:
        return 0
    sealed = 0
    for name in names:
        path = box / name
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        meant = doc.get("repository") if isinstance(doc, dict) else None
        if meant is not None and url not in (meant, _local_form(meant)):
            continue
        claimed = box / f".{name}.{os.getpid()}"
        try:
            os.rename(path, claimed)
        except OSError:
            continue  # another session took it
        try:
            log.append("run-ended-elsewhere", doc["record"])
        except BaseException:
            os.rename(claimed, path)
            raise
        claimed.unlink()
        sealed += 1
    return sealed


# -- wal-push counts ---------------------------------------------------------------------------


def _hour(now: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H", time.gmtime(now))


def _counter_key(url: str, source: str) -> str:
    import blake3

    return blake3.blake3(f"{url}\0{source}".encode()).hexdigest()[:16]


def count_push(
    state_dir: Path, url: str, source: str, pushed: int = 1, now: float | None = None
) -> None:
    """One byte per file pushed, appended to the counter of (repository, source, hour): an
    append is atomic, so concurrent pushes lose no count, and nothing is read."""
    folder = state_dir / COUNTS
    key = _counter_key(url, source)
    counter = folder / f"{key}.{_hour(now)}"
    try:
        fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"." * pushed)
    finally:
        os.close(fd)
    meta = folder / f"{key}.json"
    if not meta.exists():
        import json

        tmp = folder / f".{key}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps({"repository": url, "source": source}).encode())
        finally:
            os.close(fd)
        os.replace(tmp, meta)


def counts_due(state_dir: Path, now: float | None = None) -> bool:
    """Whether a counter of an hour that has passed waits to be sealed."""
    current = _hour(now)
    try:
        return any(_due(entry.name, current) for entry in os.scandir(state_dir / COUNTS))
    except OSError:
        return False


def _due(name: str, current: str) -> bool:
    key, _, hour = name.partition(".")
    return len(key) == 16 and len(hour) == 11 and hour < current


def _seal_counts(log: AuditLog, state_dir: Path, url: str, now: float | None = None) -> int:
    """One "wal-push-count" record per counter of `url` whose hour has passed (two for one
    hour when a push raced the sealing: their counts add up), each removed once sealed."""
    import json

    folder = state_dir / COUNTS
    current = _hour(now)
    try:
        due = sorted(e.name for e in os.scandir(folder) if _due(e.name, current))
    except OSError:
        return 0
    sealed = 0
    for name in due:
        key, _, hour = name.partition(".")
        try:
            meta = json.loads((folder / f"{key}.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("repository") != url and url != _local(meta.get("repository")):
            continue
        claimed = folder / f".{name}.{os.getpid()}"
        try:
            os.rename(folder / name, claimed)
        except OSError:
            continue
        start = f"{hour[:4]}-{hour[4:6]}-{hour[6:8]}T{hour[9:11]}:00:00+00:00"
        end = f"{hour[:4]}-{hour[4:6]}-{hour[6:8]}T{hour[9:11]}:59:59.999+00:00"
        record = {
            "operation": COUNTED,
            "status": "ok",
            "repository": meta.get("repository"),
            "source": meta.get("source"),
            "host": log.host,
            "started": start,
            "ended": end,
            "timestamp": end,
            "count": claimed.stat().st_size,
        }
        try:
            log.append("wal-push-count", record)
        except BaseException:
            os.rename(claimed, folder / name)
            raise
        claimed.unlink()
        sealed += 1
    return sealed


def _local(url: object) -> str | None:
    from medvault.service.session import _local_form

    return _local_form(url) if isinstance(url, str) else None


def seal_pending(session: Session, repo: Repository) -> None:
    """What this host keeps for `repo` in its state directory and can seal now: runs in the
    outbox, and wal-push counts of hours that have passed."""
    state = session.state_dir
    if state is None or not (outbox_waiting(state) or counts_due(state)):
        return
    log = audit_log(session, repo)
    _seal_outbox(log, state, repo.url)
    _seal_counts(log, state, repo.url)


# -- runs killed before their record: found by their stale lock -------------------------------

INTERRUPTED = "interrupted: the process ended without finishing (found by {operation} on {host})"


def seal_interrupted(session: Session, repo: Repository, found_by: RunRecord) -> int:
    """A run killed (SIGKILL, a power cut) leaves no record, only its lock naming its run id.
    For each stale lock the session's repository met (acquiring a lock, or `unlock`) whose
    run has no record, seal one: status failed, the lock's times as the run's. A run found
    by two commands at once may be recorded twice (same run id)."""
    found = {lock.run_id: lock for lock in repo.stale_locks if lock.run_id != found_by.run_id}
    repo.stale_locks = []
    if not found:
        return 0
    import datetime as dt

    from medvault.repository.audit import chain_id
    from medvault.repository.crypto import ENCRYPTION
    from medvault.service.runs import RunRecord

    def iso(seconds: float) -> str:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")

    log = audit_log(session, repo)
    sealed = 0
    for run_id, lock in found.items():
        chains = {log.chain, chain_id(repo.config.repo_id, lock.host)}
        if any(log.recorded(chain, run_id, since=iso(lock.created)) for chain in chains):
            continue
        operation, _, source = lock.purpose.partition(" of ")
        record = RunRecord(
            run_id=run_id,
            operation=operation.strip() or "unknown",
            source=source.strip() or None,
            repository=repo.url,
            started=iso(lock.created),
            ended=iso(lock.refreshed),  # its last sign of life
            duration_s=round(max(lock.refreshed - lock.created, 0.0), 3),
            status="failed",
            bytes_read=0,
            bytes_stored=0,
            bytes_restored=0,
            snapshots=(),
            error=INTERRUPTED.format(operation=found_by.operation, host=session.caller.host),
            user=lock.user,
            host=lock.host,
            shell="unknown",
            details={"lock": lock.name, "purpose": lock.purpose, "pid": lock.pid},
            encryption=ENCRYPTION,
        )
        log.append("run", record_doc(record))
        sealed += 1
    return sealed


# -- `medvault audit verify` and `audit export` ------------------------------------------------


# Options and results are NamedTuples, not frozen dataclasses: this module is imported on
# every wal-push, and defining a dataclass costs a millisecond.
class VerifyResult(NamedTuple):
    report: AuditReport
    # Heads this host wrote (its state directory's cache), checked as anchors.
    anchors: dict[str, int]


def audit_verify(session: Session) -> VerifyResult:
    """Every audit chain of the repository, record by record, against the heads this host
    wrote as anchors. The run is `failed` when anything is wrong; the shell exits with
    AuditTrailBroken's code."""
    with session.run("audit-verify") as run:
        repo = session.open()
        run.repository = repo.url
        log = audit_log(session, repo)
        anchors = log.cached_heads()  # read before listing: an append meanwhile is no gap
        report = log.verify(expected_heads=anchors)
        run.details["records"] = report.records
        run.details["chains"] = len(report.chains)
        if not report.ok:
            run.details["problems"] = len(report.problems)
            run.fail(report.problems[0])
        return VerifyResult(report, {chain: head.seq for chain, head in anchors.items()})


def broken(result: VerifyResult) -> AuditTrailBroken:
    """The error a shell raises after showing a report with problems."""
    count = len(result.report.problems)
    return AuditTrailBroken(
        f"the audit trail is damaged ({count} problem(s)); the records named above were "
        "edited, deleted, reordered or cut off: compare with a copy of the repository"
    )


EXPORT_FORMATS = ("jsonl", "csv")
# The CSV's columns: the entry's place, then every field of a run record.
CSV_COLUMNS = (
    "chain",
    "seq",
    "kind",
    "timestamp",
    "operation",
    "status",
    "source",
    "repository",
    "destination",
    "user",
    "host",
    "shell",
    "started",
    "ended",
    "duration_s",
    "bytes_read",
    "bytes_stored",
    "bytes_restored",
    "snapshots",
    "error",
    "data_classification",
    "encryption",
    "retention_policy",
    "compliance_flags",
    "recovery_point",
    "justification",
    "approver",
    "count",
    "run_id",
    "details",
)


class ExportOptions(NamedTuple):
    since: str  # an ISO date or time (UTC unless it says), or a duration back from now: "30d"
    until: str | None = None
    format: str = "jsonl"


class ExportResult(NamedTuple):
    records: int  # written
    skipped: int  # damaged records left out (`audit verify` names them)


def parse_moment(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """An ISO 8601 date or time (UTC unless it names a zone), or a duration back from now."""
    import datetime as dt

    from medvault.durations import parse_duration

    now = now or dt.datetime.now(dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            return now - parse_duration(text)
        except ValueError:
            raise UsageError(
                f"{text!r} is neither a date (2026-01-31, 2026-01-31T08:00) nor a duration "
                "back from now (30d)"
            ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def audit_export(
    session: Session, options: ExportOptions, write: Callable[[str], object]
) -> ExportResult:
    """The records of every chain whose timestamp lies in [since, until), oldest first, one
    line each (JSON Lines, or CSV with a header), handed to `write`."""
    if options.format not in EXPORT_FORMATS:
        raise UsageError(f"--format {options.format!r}: choose jsonl or csv")
    since = parse_moment(options.since)
    until = parse_moment(options.until) if options.until is not None else None
    if until is not None and until <= since:
        raise UsageError("--until must be later than --since")
    with session.run("audit-export") as run:
        repo = session.open()
        run.repository = repo.url
        before = len(repo.warnings)
        rows = _in_period(audit_log(session, repo).entries(), since, until)
        lines = _csv_lines(rows) if options.format == "csv" else _jsonl_lines(rows)
        count = 0
        for line, counted in lines:
            write(line)
            count += counted
        skipped = sum(1 for w in repo.warnings[before:] if w.startswith("audit record "))
        run.details.update(records=count, since=since.isoformat(), format=options.format)
        if until is not None:
            run.details["until"] = until.isoformat()
        return ExportResult(count, skipped)


def _in_period(
    entries: Iterator[AuditEntry], since: dt.datetime, until: dt.datetime | None
) -> Iterator[AuditEntry]:
    """Chains are read one after the other; the export is ordered by time across them."""
    import datetime as dt

    def moment(entry: AuditEntry) -> dt.datetime | None:
        stamp = entry.record.get("timestamp") or entry.record.get("ended")
        try:
            return dt.datetime.fromisoformat(str(stamp))
        except ValueError:
            return None

    chosen = []
    for entry in entries:
        when = moment(entry)
        if when is not None and when >= since and (until is None or when < until):
            chosen.append((when, entry.chain, entry.seq, entry))
    chosen.sort(key=lambda item: item[:3])
    return iter(item[3] for item in chosen)


def _row(entry: AuditEntry) -> dict[str, Any]:
    return {"chain": entry.chain, "seq": entry.seq, "kind": entry.kind, **entry.record}


def _jsonl_lines(entries: Iterator[AuditEntry]) -> Iterator[tuple[str, int]]:
    import json

    for entry in entries:
        yield json.dumps(_row(entry), sort_keys=True, ensure_ascii=False) + "\n", 1


def _csv_lines(entries: Iterator[AuditEntry]) -> Iterator[tuple[str, int]]:
    import csv
    import io
    import json

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def take() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield take(), 0
    for entry in entries:
        row = _row(entry)
        cells = []
        for column in CSV_COLUMNS:
            value = row.get(column)
            if isinstance(value, list | dict):
                value = json.dumps(value, sort_keys=True, ensure_ascii=False)
            cells.append("" if value is None else value)
        writer.writerow(cells)
        yield take(), 1
