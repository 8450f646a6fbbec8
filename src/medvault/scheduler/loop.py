"""The scheduler: which jobs are due, in what order they start, and what became of them.

Pure logic over an injectable clock and a `Launcher` (which starts a job as a child process:
scheduler/launch.py). `run_pending(now)` is one step, for tests and for the loop that
`start()` runs on its own thread.

- A firing is the last scheduled time in (the last firing accounted for, now]: after a pause
  several missed firings are one. With `catch_up` it runs; without, it runs only when it is
  at most `misfire_grace` late (APScheduler's coalesce=True, max_instances=1 and
  misfire_grace_time, said explicitly).
- A job that fires while it still runs, or still waits its turn, is not started again: the
  firing is coalesced into the run under way and counted in its state.
- Jobs touching one repository run one at a time; when several wait, backups start first,
  then copy, check, drill, and prune last (jobs.PRIORITY says why). A job waiting for its
  repository holds it against jobs of lower priority, so a prune never jumps the queue.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, Protocol

from medvault.processes import process_start
from medvault.scheduler import state as statefile
from medvault.scheduler.jobs import Job
from medvault.scheduler.state import Current, JobState

log = logging.getLogger("medvault.scheduler")
Clock = Callable[[], dt.datetime]  # an aware datetime (UTC) per call


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Outcome:
    """How a job's child process ended."""

    status: str  # ok / failed / incomplete / refused / interrupted / killed
    exit_code: int | None
    run_ids: tuple[str, ...] = ()
    error: str | None = None  # the first line of what went wrong


class JobProcess(Protocol):
    """A job's child process, as the scheduler sees it."""

    @property
    def pid(self) -> int | None: ...

    def poll(self) -> Outcome | None:
        """None while it runs."""
        ...

    def run_ids(self) -> tuple[str, ...]:
        """The ids of the runs it has started so far."""
        ...

    def interrupt(self) -> None:
        """Ask it to stop (SIGINT: medvault's interruption, which leaves no lock)."""
        ...

    def kill(self) -> None: ...


class Launcher(Protocol):
    def launch(self, job: Job, launch_id: str) -> JobProcess: ...

    def adopt(self, job: Job, current: Current) -> JobProcess | None:
        """A child an earlier scheduler left running (it died without stopping it): follow
        it if it still runs, so the job does not run twice at once; None when it ended."""
        ...

    def after_kill(self, job: Job) -> None:
        """Remove what a killed child left behind (its repository locks)."""
        ...


class RunningJob(NamedTuple):
    job: str
    source: str | None
    operation: str
    started: dt.datetime
    run_id: str | None  # the newest run it started, once known


class Aborted(NamedTuple):
    """A job `stop` had to interrupt (killed: it did not end within the timeout)."""

    job: str
    source: str | None
    operation: str
    started: dt.datetime
    run_id: str | None
    killed: bool


class JobListing(NamedTuple):
    name: str
    kind: str
    operation: str
    source: str | None
    repository: str
    schedule: str
    timezone: str
    catch_up: bool
    next_run: dt.datetime | None  # in the past: due now (waiting, or at the next start-up)
    running: bool
    waiting: bool  # due, waiting for its repository
    state: JobState | None


def next_run(job: Job, state: JobState | None, now: dt.datetime) -> dt.datetime:
    """When the job fires next: after its last firing, or, never seen, counted from now."""
    reference = state.reference if state is not None else now
    return job.parsed.due_after(reference)


def child_alive(current: Current) -> bool:
    """Whether the child a state names still runs (the same process, not a later one)."""
    return current.pid is not None and process_start(current.pid) == current.pid_start != ""


def listing(
    jobs: Sequence[Job],
    states: dict[str, JobState],
    now: dt.datetime,
    running: set[str] | None = None,
    waiting: set[str] | None = None,
) -> tuple[JobListing, ...]:
    """Every job with its next run and last result. Without `running` (a reader other than
    the scheduler), a job runs when the child its state names is alive."""
    rows = []
    for job in jobs:
        state = states.get(job.name)
        if running is not None:
            is_running = job.name in running
        else:
            current = state.current if state is not None else None
            is_running = current is not None and child_alive(current)
        rows.append(
            JobListing(
                name=job.name,
                kind=job.kind,
                operation=job.operation,
                source=job.source,
                repository=job.repository,
                schedule=job.schedule,
                timezone=job.timezone,
                catch_up=job.catch_up,
                next_run=next_run(job, state, now),
                running=is_running,
                waiting=job.name in (waiting or set()),
                state=state,
            )
        )
    return tuple(rows)


class Scheduler:
    def __init__(
        self,
        jobs: Sequence[Job],
        clock: Clock,
        state_path: Path,
        launcher: Launcher,
        *,
        misfire_grace: dt.timedelta = dt.timedelta(seconds=60),
        poll_s: float = 1.0,
    ) -> None:
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError("job names must be unique")
        self.jobs = tuple(jobs)
        self._by_name = {job.name: job for job in jobs}
        self._clock = clock
        self.state_path = state_path
        self._launcher = launcher
        self._grace = misfire_grace
        self._poll_s = poll_s
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: dict[str, JobProcess] = {}
        self._waiting: dict[str, dt.datetime] = {}  # job name -> the firing it waits with
        self.errors: list[str] = []  # what the loop met (a launch that failed); newest last
        loaded = statefile.load(state_path)
        self._states = {name: s for name, s in loaded.items() if name in self._by_name}
        self._saved: dict[str, JobState] | None = None
        now = clock()
        for job in self.jobs:  # a new job counts from now: nothing of it was missed
            self._state(job, now)
        self._follow_left_running()
        self._save()

    # -- what the integrator asks ------------------------------------------------------------

    def running(self) -> tuple[RunningJob, ...]:
        with self._lock:
            rows = []
            for name, proc in self._procs.items():
                job, current = self._by_name[name], self._states[name].current
                assert current is not None
                ids = proc.run_ids() or current.run_ids
                rows.append(
                    RunningJob(
                        name, job.source, job.operation, current.started, ids[-1] if ids else None
                    )
                )
            return tuple(rows)

    def listing(self) -> tuple[JobListing, ...]:
        with self._lock:
            return listing(
                self.jobs,
                dict(self._states),
                self._clock(),
                running=set(self._procs),
                waiting=set(self._waiting),
            )

    def states(self) -> dict[str, JobState]:
        with self._lock:
            return dict(self._states)

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop on a thread of its own until `stop`."""
        if self._thread is not None:
            raise RuntimeError("the scheduler is already started")
        self._thread = threading.Thread(target=self._loop, name="medvault-scheduler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.run_pending(self._clock())
            except Exception as exc:  # the loop outlives one bad step; the error is kept
                self._error(f"scheduler step failed: {type(exc).__name__}: {exc}")
            self._stopping.wait(self._pause())

    def _pause(self) -> float:
        """Until the next firing, checked at least every poll while children run (to reap
        them) and every 30 s otherwise (the wall clock may have been set meanwhile)."""
        with self._lock:
            now = self._clock()
            ahead = [next_run(job, self._states.get(job.name), now) for job in self.jobs]
            until = min(((t - now).total_seconds() for t in ahead), default=30.0)
            cap = self._poll_s if self._procs or self._waiting else 30.0
            return max(0.01, min(until, cap))

    def run_pending(self, now: dt.datetime | None = None) -> tuple[str, ...]:
        """One step: reap ended children, fire what is due, start what may start. Returns
        the names of the jobs started."""
        with self._lock:
            now = now or self._clock()
            self._reap(now)
            if self._stopping.is_set():
                return ()
            for job in self.jobs:
                self._fire(job, now)
            started = self._dispatch(now)
            self._save()
            return started

    def _state(self, job: Job, now: dt.datetime) -> JobState:
        state = self._states.get(job.name)
        if state is None:
            state = self._states[job.name] = JobState(first_seen=now, reference=now)
        return state

    def _fire(self, job: Job, now: dt.datetime) -> None:
        state = self._state(job, now)
        due = job.parsed.latest_due(state.reference, now)
        if due is None:
            return
        state = replace(state, reference=due)
        if job.name in self._procs or job.name in self._waiting:
            why = "still running" if job.name in self._procs else "still waiting for its turn"
            state = statefile.noted(
                replace(state, coalesced=state.coalesced + 1, last_coalesced=due),
                f"{due.isoformat()}: firing coalesced, the job was {why}",
            )
        elif not job.catch_up and now - due > self._grace:
            state = statefile.noted(
                replace(state, missed=state.missed + 1, last_missed=due),
                f"{due.isoformat()}: firing missed while the service was down; not caught "
                "up (catch_up = false)",
            )
        else:
            self._waiting[job.name] = due
        self._states[job.name] = state

    def _dispatch(self, now: dt.datetime) -> tuple[str, ...]:
        busy = {repo for name in self._procs for repo in self._by_name[name].repositories}
        claimed: set[str] = set()
        started = []
        order = sorted(
            self._waiting.items(),
            key=lambda item: (self._by_name[item[0]].priority, item[1], item[0]),
        )
        for name, _due in order:
            job = self._by_name[name]
            touched = set(job.repositories)
            if touched & (busy | claimed):
                claimed |= touched  # it goes before anything of lower priority there
                continue
            del self._waiting[name]
            if self._launch(job, now):
                busy |= touched
                started.append(name)
        return tuple(started)

    def _launch(self, job: Job, now: dt.datetime) -> bool:
        launch_id = os.urandom(8).hex()
        state = self._states[job.name]
        try:
            proc = self._launcher.launch(job, launch_id)
        except OSError as exc:
            error = f"could not start the job: {exc}"
            self._error(f"{job.name}: {error}")
            self._states[job.name] = replace(
                state, last_start=now, last_end=now, last_status="failed", last_error=error
            )
            return False
        pid = proc.pid
        current = Current(
            started=now,
            launch=launch_id,
            pid=pid,
            pid_start=process_start(pid) if pid is not None else "",
        )
        self._states[job.name] = replace(state, last_start=now, current=current)
        self._procs[job.name] = proc
        return True

    def _reap(self, now: dt.datetime) -> None:
        for name, proc in list(self._procs.items()):
            outcome = proc.poll()
            state = self._states[name]
            if outcome is None:
                ids = proc.run_ids()
                if state.current is not None and ids != state.current.run_ids:
                    self._states[name] = replace(state, current=replace(state.current, run_ids=ids))
                continue
            del self._procs[name]
            self._states[name] = self._ended(state, outcome, now)

    @staticmethod
    def _ended(state: JobState, outcome: Outcome, now: dt.datetime) -> JobState:
        return replace(
            state,
            last_end=now,
            last_status=outcome.status,
            last_run_ids=outcome.run_ids,
            last_error=outcome.error,
            last_exit_code=outcome.exit_code,
            current=None,
        )

    def _follow_left_running(self) -> None:
        """Children named by the state file: a scheduler before this one died with them
        running. Follow those still alive; the others ended unseen."""
        now = self._clock()
        for name, state in list(self._states.items()):
            if state.current is None:
                continue
            proc = self._launcher.adopt(self._by_name[name], state.current)
            if proc is not None:
                self._procs[name] = proc
                continue
            self._states[name] = self._ended(
                state,
                Outcome(
                    "interrupted",
                    None,
                    state.current.run_ids,
                    "the service stopped while the job ran; the run's record says how it ended",
                ),
                now,
            )

    # -- stopping ----------------------------------------------------------------------------

    def stop(self, timeout_s: float) -> tuple[Aborted, ...]:
        """Stop firing; ask running jobs to stop (SIGINT: each leaves the repository
        consistent and unlocked); kill those still running after `timeout_s`, then remove
        their locks. Returns the jobs it had to interrupt."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            self._waiting.clear()
            interrupted = dict(self._procs)
            aborted = {name: self._aborted(name, killed=False) for name in interrupted}
            for proc in interrupted.values():
                proc.interrupt()
        deadline = time.monotonic() + timeout_s
        while self._still_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            left = dict(self._procs)
            for name, proc in left.items():
                proc.kill()
                aborted[name] = aborted[name]._replace(killed=True)
        while self._still_running():  # a killed process ends at once; reap it
            time.sleep(0.05)
        for name in left:
            try:
                self._launcher.after_kill(self._by_name[name])
            except OSError as exc:
                self._error(f"{name}: could not remove its locks: {exc}")
        with self._lock:
            for name in left:
                state = self._states[name]
                self._states[name] = replace(
                    state,
                    last_status="killed",
                    last_error=f"did not stop within {timeout_s:g}s of being asked; killed",
                )
            self._save()
        return tuple(aborted.values())

    def _still_running(self) -> bool:
        with self._lock:
            self._reap(self._clock())
            self._save()
            return bool(self._procs)

    def _aborted(self, name: str, *, killed: bool) -> Aborted:
        job, current = self._by_name[name], self._states[name].current
        assert current is not None
        ids = self._procs[name].run_ids() or current.run_ids
        return Aborted(
            name, job.source, job.operation, current.started, ids[-1] if ids else None, killed
        )

    # -- bookkeeping -------------------------------------------------------------------------

    def _save(self) -> None:
        """Written when it changed (a step that only looked writes nothing)."""
        if self._states == self._saved:
            return
        try:
            statefile.save(self.state_path, self._states)
            self._saved = dict(self._states)
        except OSError as exc:
            self._error(f"cannot write {self.state_path}: {exc}")

    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.errors = [*self.errors[-49:], message]
