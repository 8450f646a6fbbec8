"""A source's hooks (`[source.NAME.hooks]`) and post-restore checks (`[source.NAME.restore]`).

Hooks are the clinic's own commands around a backup (`before`, `after`) or a restore
(`before_restore`, `after_restore`): stop an application for a consistent copy, start it
again, tell a ward's system that data came back. Each command is split with shlex and run
without a shell, in a session of its own (a timeout kills the command and whatever it
started), with the minimal environment of childenv.py plus what a hook may want to know:
MEDVAULT_HOOK (the phase), MEDVAULT_SOURCE, MEDVAULT_RUN_ID, MEDVAULT_SNAPSHOT once there is
one, MEDVAULT_STATUS in the after phases (ok or failed) and MEDVAULT_TARGET for restores.
Never a passphrase, key or token of medvault's.

Every hook's command, exit code, time and the last OUTPUT_KEPT bytes of its output (stdout
and stderr together) go into the run's details under "hooks". A failing `before` hook fails
the run before anything is read (HookFailed); the `after` hooks run whenever the before
phase began, also when the operation failed, and one of them failing makes a successful run
incomplete: the snapshot (or the restored data) is kept.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medvault.errors import HookFailed

if TYPE_CHECKING:
    from medvault.config import HooksSettings
    from medvault.service.runs import Run
    from medvault.service.session import Session

OUTPUT_KEPT = 4096  # bytes of each hook's output in the run record (its end)


@dataclass
class HookPhase:
    """What the operation tells the after phase (set inside the `around` block)."""

    snapshot: str | None = None
    target: str | None = None
    after_failure: str | None = None  # one line, when an after hook failed
    ran: list[dict[str, Any]] = field(default_factory=list)


def hooks_of(session: Session, source: str | None) -> HooksSettings | None:
    """The hooks configured for `source`, if any."""
    if source is None or source not in session.configured_sources():
        return None
    hooks: HooksSettings | None = getattr(session.settings.source[source], "hooks", None)
    return hooks


@contextlib.contextmanager
def around(
    session: Session,
    run: Run,
    source: str | None,
    *,
    restore: bool = False,
    snapshot: str | None = None,
    target: str | None = None,
) -> Iterator[HookPhase]:
    """Run the source's before hooks, the block, then its after hooks (see the module)."""
    phase = HookPhase(snapshot=snapshot, target=target)
    hooks = hooks_of(session, source)
    before_name, after_name = (
        ("before_restore", "after_restore") if restore else ("before", "after")
    )
    before = list(getattr(hooks, before_name, [])) if hooks else []
    after = list(getattr(hooks, after_name, [])) if hooks else []
    if hooks is None or not (before or after):
        yield phase
        return
    from medvault.durations import parse_duration

    timeout = parse_duration(hooks.timeout).total_seconds()
    assert source is not None
    run.details["hooks"] = phase.ran
    try:
        for command in before:
            done = _run_one(command, before_name, timeout, _env(run, source, before_name, phase))
            phase.ran.append(done)
            if done["problem"] is not None:
                raise HookFailed(f"{before_name} hook {command!r} {done['problem']}")
        yield phase
    except BaseException:
        _after(run, source, after_name, after, timeout, phase, "failed")
        raise
    _after(run, source, after_name, after, timeout, phase, "ok")
    if phase.after_failure is not None:
        session.notes.append(phase.after_failure)
        reason = run.incomplete_because
        run.incomplete(f"{reason}; {phase.after_failure}" if reason else phase.after_failure)


def _after(
    run: Run,
    source: str,
    name: str,
    commands: list[str],
    timeout: float,
    phase: HookPhase,
    status: str,
) -> None:
    for command in commands:
        done = _run_one(command, name, timeout, _env(run, source, name, phase, status))
        phase.ran.append(done)
        if done["problem"] is not None and phase.after_failure is None:
            phase.after_failure = f"{name} hook {command!r} {done['problem']}"


def _env(
    run: Run, source: str, name: str, phase: HookPhase, status: str | None = None
) -> dict[str, str]:
    from medvault.childenv import minimal

    env = minimal() | {"MEDVAULT_HOOK": name, "MEDVAULT_SOURCE": source}
    env["MEDVAULT_RUN_ID"] = run.run_id
    if phase.snapshot is not None:
        env["MEDVAULT_SNAPSHOT"] = phase.snapshot
    if phase.target is not None:
        env["MEDVAULT_TARGET"] = phase.target
    if status is not None:
        env["MEDVAULT_STATUS"] = status
    return env


def _run_one(command: str, name: str, timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Run one hook; its record, with `problem` (None when it exited 0)."""
    began = time.monotonic()
    record: dict[str, Any] = {"hook": name, "command": command, "exit_code": None}
    try:
        process = subprocess.Popen(
            shlex.split(command),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a timeout kills its whole process group
        )
    except OSError as exc:
        record.update(seconds=0.0, output="", truncated=False)
        record["problem"] = f"could not start: {exc.strerror or exc}"
        return record
    assert process.stdout is not None
    tail = _Tail(process.stdout)
    try:
        process.wait(timeout)
        problem = None if process.returncode == 0 else f"failed: exit code {process.returncode}"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        problem = f"timed out after {timeout:g} s and was killed"
        record["timed_out"] = True
    tail.finish()
    record.update(
        exit_code=process.returncode,
        seconds=round(time.monotonic() - began, 3),
        output=tail.text(),
        truncated=tail.truncated,
        problem=problem,
    )
    return record


class _Tail:
    """Reads a pipe to its end in a thread, keeping only its last OUTPUT_KEPT bytes."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._kept = b""
        self.truncated = False
        self._thread = threading.Thread(target=self._read, name="medvault-hook-output", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._pipe:
            while chunk := self._pipe.read1(65536):
                self._kept += chunk
                if len(self._kept) > OUTPUT_KEPT:
                    self._kept = self._kept[-OUTPUT_KEPT:]
                    self.truncated = True

    def finish(self) -> None:
        # A grandchild that left the process group may hold the pipe open: stop waiting
        # after a while (the hook itself has ended).
        self._thread.join(10)

    def text(self) -> str:
        return self._kept.decode("utf-8", "replace")


# -- post-restore checks ----------------------------------------------------------------------


def configured_checks(session: Session, source: str | None) -> tuple[str, ...]:
    """`[source.NAME.restore] checks` of a PostgreSQL source (dumps or CSV exports); () when
    it has none."""
    from medvault.config import PostgresCsvSourceSettings, PostgresSourceSettings

    known = source is not None and source in session.configured_sources()
    settings = session.settings.source[source] if known and source is not None else None
    if not isinstance(settings, PostgresSourceSettings | PostgresCsvSourceSettings):
        return ()
    return tuple(settings.restore.checks)


def restore_checks(
    session: Session, run: Run, source: str, dsn: str, database: str
) -> tuple[list[dict[str, Any]], str | None]:
    """Run `[source.NAME.restore] checks` in the restored database as drills run theirs
    (verification/user_checks.py): each outcome, and the first failure in one line."""
    queries = configured_checks(session, source)
    if not queries:
        return [], None
    from medvault.postgres.server import connect
    from medvault.verification.drills import Check
    from medvault.verification.user_checks import run_user_checks

    found: list[Check] = []
    with connect(dsn, dbname=database, what="the restored database") as conn:
        run_user_checks(conn, queries, found.append)
    outcomes = [
        {"name": c.name, "ok": c.ok, "detail": c.detail, "seconds": c.seconds} for c in found
    ]
    run.details["checks"] = outcomes
    failed = next((c for c in found if not c.ok), None)
    if failed is None:
        return outcomes, None
    failure = f"restore {failed.name} failed: {failed.detail}"
    run.fail(failure)
    return outcomes, failure


def checks_not_run(session: Session, run: Run, source: str, why: str) -> str | None:
    """Say, in the run's record and the session's notes, that the source's checks could not
    run (no server to run them in): never skipped silently. None when it has none."""
    queries = configured_checks(session, source)
    if not queries:
        return None
    note = f"{len(queries)} restore check(s) of source {source} not run: {why}"
    run.details["checks_not_run"] = why
    session.notes.append(note)
    return why
