"""What the scheduler remembers per job, in `<state dir>/schedule/state.json`: when it last
fired, its last run's start, end, status, run ids and error line, the run under way, and the
firings it coalesced or skipped. Written whole to a temporary file and renamed over the old
one, so a reader (`medvault schedule`) or a crash never sees half of it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

VERSION = 1


@dataclass(frozen=True)
class Current:
    """The run under way: its child process and the run ids it reported so far."""

    started: dt.datetime
    launch: str  # the scheduler's id of this launch
    pid: int | None = None
    pid_start: str = ""  # /proc start time: a later process with the same pid is not it
    run_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobState:
    first_seen: dt.datetime  # when the scheduler first knew the job (intervals count from it)
    reference: dt.datetime  # the last firing accounted for (run, coalesced or skipped)
    last_start: dt.datetime | None = None
    last_end: dt.datetime | None = None
    # ok / failed / incomplete / refused (the run's own), interrupted (stopped by the
    # service, or the service went away), killed (did not stop within the timeout)
    last_status: str | None = None
    last_run_ids: tuple[str, ...] = ()
    last_error: str | None = None
    last_exit_code: int | None = None
    current: Current | None = None
    coalesced: int = 0  # firings that found the job still running or waiting
    last_coalesced: dt.datetime | None = None
    missed: int = 0  # firings missed while down and not caught up (catch_up = false)
    last_missed: dt.datetime | None = None
    notes: tuple[str, ...] = field(default=())


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


_TIMES = {"first_seen", "reference", "last_start", "last_end", "last_coalesced", "last_missed"}


def _time(text: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if isinstance(text, str) else None


def _decode(doc: dict[str, Any]) -> JobState:
    known = {f.name for f in fields(JobState)}
    values: dict[str, Any] = {k: v for k, v in doc.items() if k in known}
    for name in _TIMES & values.keys():
        values[name] = _time(values[name])
    for name in ("last_run_ids", "notes"):
        values[name] = tuple(values.get(name) or ())
    current = values.get("current")
    if isinstance(current, dict):
        values["current"] = Current(
            started=dt.datetime.fromisoformat(current["started"]),
            launch=str(current["launch"]),
            pid=current.get("pid"),
            pid_start=str(current.get("pid_start", "")),
            run_ids=tuple(current.get("run_ids") or ()),
        )
    return JobState(**values)


def load(path: Path, *, set_aside: bool = True) -> dict[str, JobState]:
    """Every job's state; {} when there is no file yet. A damaged file is set aside (renamed
    with `.damaged`; a reader only passes `set_aside=False`) rather than trusted: the jobs
    then start afresh."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {name: _decode(entry) for name, entry in doc["jobs"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError):
        if not set_aside:
            return {}
        with contextlib.suppress(OSError):
            path.rename(path.with_suffix(".damaged"))
        return {}


def save(path: Path, states: dict[str, JobState]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    doc = {
        "version": VERSION,
        "jobs": {name: _encode(asdict(state)) for name, state in sorted(states.items())},
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(doc, out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def noted(state: JobState, note: str, keep: int = 10) -> JobState:
    """The state with a note added (the newest `keep` are kept)."""
    return replace(state, notes=(*state.notes, note)[-keep:])
