"""`serve`'s core, beside its HTTP listener: the scheduler firing jobs (each a child process:
scheduler/, service/jobs.py), and a watch loop that every `[alerts] evaluate_every`, and as
soon as a job ends, gathers the observations (service/observe.py), evaluates the alert rules
(service/alerting.py), delivers what is due (service/notify.py) and renders the metrics that
/metrics serves (service/metrics.py).

The watch loop is the only user of the session: HTTP handlers read what it left (the metrics
text, the health), so a slow repository never stalls a scrape and one reading serves both
alerts and metrics. Repositories are opened with kept keys (no key derivation every minute)
and closed after each round.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medvault.durations import parse_duration
from medvault.errors import first_line

if TYPE_CHECKING:
    from medvault.monitoring.events import AlertEvent
    from medvault.monitoring.facts import RunningJob
    from medvault.scheduler.loop import Aborted, Scheduler
    from medvault.service.alerting import AlertsResult
    from medvault.service.session import Session

log = logging.getLogger("medvault.serve")

Clock = Callable[[], dt.datetime]
# Alertmanager ends an alert it has not heard of for resolve_timeout (5 min by default):
# firing alerts are sent to it again at least this often, as Prometheus does.
ALERTMANAGER_RESEND_S = 60.0
# How often the watch loop looks whether a job has ended (a dict copy under a lock).
_JOB_END_POLL_S = 1.0
# A batch a channel failed to take is tried again at each of this many next readings: an
# alert marked sent would otherwise wait for its repeat_interval (4 h by default).
DELIVERY_RETRIES = 5


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Health:
    """/healthz: unhealthy when the watch loop has not completed a reading for three of its
    periods (it is stuck, or every reading fails)."""

    healthy: bool
    started: dt.datetime | None
    last_reading: dt.datetime | None
    last_error: str | None
    running_jobs: tuple[str, ...]
    firing_alerts: int
    scheduler_errors: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "started": self.started.isoformat() if self.started else None,
            "last_reading": self.last_reading.isoformat() if self.last_reading else None,
            "last_error": self.last_error,
            "running_jobs": list(self.running_jobs),
            "firing_alerts": self.firing_alerts,
            "scheduler_errors": list(self.scheduler_errors),
        }


class Daemon:
    """Started and stopped by the shell (the HTTP server's lifespan); `reading()` runs one
    round of the watch loop on the caller's thread (tests)."""

    def __init__(
        self, session: Session, *, clock: Clock = utc_now, scheduler: Scheduler | None = None
    ) -> None:
        from medvault.service.jobs import scheduler_for

        settings = session.settings
        self.session = session
        self._clock = clock
        self.every_s = parse_duration(settings.alerts.evaluate_every).total_seconds()
        self.stop_timeout_s = parse_duration(settings.serve.stop_timeout).total_seconds()
        self.scheduler = scheduler or scheduler_for(session, clock=clock)
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the session: one round at a time
        self._metrics = b""
        self._started: dt.datetime | None = None
        self._last_reading: dt.datetime | None = None
        self._last_error: str | None = None
        self._firing = 0
        self._alertmanager_sent = 0.0
        # (events, channel kind, tries left) that a channel did not take.
        self._undelivered: list[tuple[tuple[AlertEvent, ...], str, int]] = []
        self.aborted: tuple[Aborted, ...] = ()

    # -- the shell's verbs -------------------------------------------------------------------

    def start(self) -> None:
        self._started = self._clock()
        jobs = ", ".join(job.name for job in self.scheduler.jobs) or "none"
        log.info("started: jobs %s; alerts every %gs", jobs, self.every_s)
        self.scheduler.start()
        self._thread = threading.Thread(target=self._watch, name="medvault-watch", daemon=True)
        self._thread.start()

    def stop(self) -> tuple[Aborted, ...]:
        """Stop firing, ask running jobs to end (they leave the repository consistent and
        unlocked), kill what has not ended within [serve] stop_timeout, then stop watching."""
        log.info("stopping: running jobs get %gs to end", self.stop_timeout_s)
        self._stopping.set()
        self._wake.set()
        self.aborted = self.scheduler.stop(self.stop_timeout_s)
        for job in self.aborted:
            how = "killed after the timeout" if job.killed else "interrupted"
            log.warning("job %s %s (run %s)", job.job, how, job.run_id or "not yet recorded")
        if self._thread is not None:
            self._thread.join(timeout=60)
        log.info("stopped")
        return self.aborted

    def wake(self) -> None:
        """Take a reading now (a job ended; an operator asked)."""
        self._wake.set()

    def metrics(self) -> bytes:
        return self._metrics

    def health(self) -> Health:
        now = self._clock()
        since = self._last_reading or self._started
        healthy = since is not None and (now - since).total_seconds() < 3 * self.every_s + 60
        return Health(
            healthy=healthy and not self._stopping.is_set(),
            started=self._started,
            last_reading=self._last_reading,
            last_error=self._last_error,
            running_jobs=tuple(job.job for job in self.scheduler.running()),
            firing_alerts=self._firing,
            scheduler_errors=tuple(self.scheduler.errors[-5:]),
        )

    # -- the watch loop ----------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.is_set():
            self.reading()
            ended = self._job_ends()
            deadline = time.monotonic() + self.every_s
            while not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or self._wake.wait(min(left, _JOB_END_POLL_S)):
                    break
                if self._job_ends() != ended:  # a job ended: its record counts now
                    break
            self._wake.clear()

    def _job_ends(self) -> tuple[tuple[str, dt.datetime | None], ...]:
        return tuple((name, s.last_end) for name, s in sorted(self.scheduler.states().items()))

    def reading(self) -> AlertsResult | None:
        """One round: observe, evaluate, notify, render. A failing round is logged and
        kept for /healthz; the next one tries again."""
        from medvault import __version__
        from medvault.service.alerting import evaluate
        from medvault.service.metrics import render
        from medvault.service.observe import gather

        with self._lock:
            now = self._clock()
            try:
                observations = gather(self.session, running=self._running(), now=now)
                result = evaluate(self.session, observations, now=now)
                self._notify(result)
                self._metrics = render(self.session, observations, __version__)
                self._firing = len(result.firing)
                self._last_reading, self._last_error = now, None
                for problem in observations.problems:
                    log.warning("%s", problem)
                return result
            except Exception as exc:  # the loop outlives one bad round; /healthz tells
                self._last_error = first_line(exc)
                log.error("reading failed: %s: %s", type(exc).__name__, self._last_error)
                return None
            finally:
                for note in self.session.release():
                    log.warning("%s", note)

    def _running(self) -> tuple[RunningJob, ...]:
        from medvault.monitoring.facts import RunningJob

        return tuple(
            RunningJob(job.source, job.operation, job.started, job.run_id)
            for job in self.scheduler.running()
        )

    def _notify(self, result: AlertsResult) -> None:
        from medvault.service.notify import deliver

        for event in result.events:
            log.info("alert %s %s: %s", event.state, event.severity, event.summary)
        retrying, self._undelivered = self._undelivered, []
        for events, kind, left in retrying:
            self._deliver(events, (kind,), left - 1)
        if result.events:
            self._deliver(tuple(result.events), None, DELIVERY_RETRIES)
        # Alertmanager forgets a firing alert it is not told of again: tell it every minute.
        settings = self.session.settings.notify
        if settings.alertmanager and time.monotonic() - self._alertmanager_sent >= (
            ALERTMANAGER_RESEND_S
        ):
            self._alertmanager_sent = time.monotonic()
            sent = {event.key for event in result.events}
            again = [alert.event() for alert in result.firing if alert.key not in sent]
            if again:
                deliver(self.session, again, channels=("alertmanager",))

    def _deliver(
        self, events: tuple[AlertEvent, ...], kinds: tuple[str, ...] | None, retries: int
    ) -> None:
        """Send; what a channel did not take is kept for the next readings (every target of
        that kind gets it again: a duplicate is better than a lost alert). Failures are
        session notes, logged after the round."""
        from medvault.service.notify import deliver

        report = deliver(self.session, events, channels=kinds)
        if retries <= 0:
            return
        for kind in sorted({failed.channel for failed in report.failed}):
            self._undelivered.append((events, kind, retries))
