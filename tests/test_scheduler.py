"""When scheduled jobs fire and in what order they start: cron expressions and intervals in
a time zone, daylight saving time both ways, catch-up after downtime, coalescing, one job
at a time per repository. A controllable clock and a launcher whose children the test ends;
the real child processes are in test_scheduled_jobs.py."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from medvault.scheduler import state as statefile
from medvault.scheduler.jobs import Job
from medvault.scheduler.loop import Outcome, Scheduler
from medvault.scheduler.spec import Cron, Interval, parse_schedule, parse_zone
from medvault.scheduler.state import Current

UTC = dt.UTC
AMSTERDAM = parse_zone("Europe/Amsterdam")


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


class Clock:
    def __init__(self, start: str) -> None:
        self.now = at(start)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now


class Child:
    """A job's process as the test drives it: it ends when the test says."""

    def __init__(self, job: Job, obeys_interrupt: bool = True) -> None:
        self.job = job
        self.outcome: Outcome | None = None
        self.obeys_interrupt = obeys_interrupt
        self.signals: list[str] = []

    @property
    def pid(self) -> int | None:
        return None

    def poll(self) -> Outcome | None:
        return self.outcome

    def run_ids(self) -> tuple[str, ...]:
        return ("run-" + self.job.name,)

    def end(self, status: str = "ok", error: str | None = None) -> None:
        self.outcome = Outcome(status, 0 if status == "ok" else 1, self.run_ids(), error)

    def interrupt(self) -> None:
        self.signals.append("INT")
        if self.obeys_interrupt:
            self.outcome = Outcome("interrupted", 130, self.run_ids(), "interrupted")

    def kill(self) -> None:
        self.signals.append("KILL")
        self.outcome = Outcome("killed", -9, self.run_ids(), None)


class Launcher:
    def __init__(self, obeys_interrupt: bool = True) -> None:
        self.started: list[tuple[str, dt.datetime]] = []
        self.children: dict[str, Child] = {}
        self.cleaned: list[str] = []
        self.obeys_interrupt = obeys_interrupt
        self.clock: Clock | None = None

    def launch(self, job: Job, launch_id: str) -> Child:
        assert self.clock is not None
        self.started.append((job.name, self.clock.now))
        child = self.children[job.name] = Child(job, self.obeys_interrupt)
        return child

    def adopt(self, job: Job, current: Current) -> Child | None:
        return None  # the earlier scheduler's children are gone

    def after_kill(self, job: Job) -> None:
        self.cleaned.append(job.name)

    def names(self) -> list[str]:
        return [name for name, _ in self.started]


def scheduler(
    tmp_path: Path, clock: Clock, *jobs: Job, launcher: Launcher | None = None
) -> tuple[Scheduler, Launcher]:
    launcher = launcher or Launcher()
    launcher.clock = clock
    return Scheduler(jobs, clock, tmp_path / "schedule" / "state.json", launcher), launcher


def job(name: str, kind: str, schedule: str, repository: str = "main", **more: object) -> Job:
    return Job(name=name, kind=kind, schedule=schedule, repository=repository, **more)  # type: ignore[arg-type]


def fires(spec: str, zone: str, start: str, end: str) -> list[dt.datetime]:
    schedule = parse_schedule(spec, parse_zone(zone))
    found, moment = [], at(start)
    while (moment := schedule.due_after(moment)) < at(end):
        found.append(moment)
    return found


# -- when jobs fire ------------------------------------------------------------------------


def test_a_weekly_cron_expression_fires_on_sunday_at_two_utc() -> None:
    assert fires("0 2 * * 0", "UTC", "2026-03-04T12:00:00+00:00", "2026-03-20T00:00:00+00:00") == [
        at("2026-03-08T02:00:00+00:00"),
        at("2026-03-15T02:00:00+00:00"),
    ]


def test_a_cron_expression_reads_the_wall_clock_of_its_zone() -> None:
    """09:00 in New York is 14:00 UTC in winter and 13:00 UTC in summer."""
    winter = fires(
        "0 9 * * *", "America/New_York", "2026-01-10T00:00:00+00:00", "2026-01-11T00:00:00+00:00"
    )
    summer = fires(
        "0 9 * * *", "America/New_York", "2026-07-10T00:00:00+00:00", "2026-07-11T00:00:00+00:00"
    )
    assert winter == [at("2026-01-10T14:00:00+00:00")]
    assert summer == [at("2026-07-10T13:00:00+00:00")]


def test_a_daily_0230_job_runs_once_on_the_day_the_clocks_spring_forward() -> None:
    """02:30 does not exist in Amsterdam on 29 March 2026: the job runs once, when the gap
    ends (03:00 CEST, 01:00 UTC), and on the days around it at 02:30."""
    assert fires(
        "30 2 * * *", "Europe/Amsterdam", "2026-03-28T00:00:00+00:00", "2026-03-31T00:00:00+00:00"
    ) == [
        at("2026-03-28T02:30:00+01:00"),
        at("2026-03-29T03:00:00+02:00"),
        at("2026-03-30T02:30:00+02:00"),
    ]


def test_a_daily_0230_job_runs_once_on_the_day_the_clocks_fall_back() -> None:
    """02:30 happens twice in Amsterdam on 25 October 2026: the job runs at the first."""
    assert fires(
        "30 2 * * *", "Europe/Amsterdam", "2026-10-24T00:00:00+00:00", "2026-10-27T00:00:00+00:00"
    ) == [
        at("2026-10-24T02:30:00+02:00"),
        at("2026-10-25T02:30:00+02:00"),
        at("2026-10-26T02:30:00+01:00"),
    ]


@pytest.mark.parametrize("day", ["2026-03-29", "2026-10-25"])
def test_the_scheduler_stepping_through_a_change_day_starts_the_0230_job_once(
    tmp_path: Path, day: str
) -> None:
    clock = Clock(f"{day}T00:00:00+01:00")
    nightly = job("emr/full", "full", "30 2 * * *", source="emr", timezone="Europe/Amsterdam")
    sched, launcher = scheduler(tmp_path, clock, nightly)
    clock.advance(minutes=-60)
    while clock.now < at(f"{day}T23:59:00+00:00"):
        sched.run_pending(clock.advance(minutes=5))
        for child in launcher.children.values():
            if child.outcome is None:
                child.end()
    assert len(launcher.started) == 1


def test_a_quarter_hourly_cron_fires_once_for_the_skipped_hour() -> None:
    got = fires(
        "*/15 * * * *", "Europe/Amsterdam", "2026-03-29T00:40:00+00:00", "2026-03-29T01:20:00+00:00"
    )
    assert got == [
        at("2026-03-29T00:45:00+00:00"),  # 01:45 CET
        at("2026-03-29T01:00:00+00:00"),  # 02:00-02:45 skipped, and 03:00 CEST: one firing
        at("2026-03-29T01:15:00+00:00"),
    ]


def test_an_interval_is_elapsed_time_across_a_clock_change() -> None:
    interval = parse_schedule("every 1h", AMSTERDAM)
    assert isinstance(interval, Interval)
    start = at("2026-03-29T00:30:00+00:00")
    assert interval.due_after(start) - start == dt.timedelta(hours=1)


def test_intervals_take_seconds_minutes_hours_and_days() -> None:
    for text, seconds in [
        ("every 15s", 15),
        ("every 15m", 900),
        ("every 6h", 21600),
        ("every 2d", 172800),
    ]:
        parsed = parse_schedule(text, AMSTERDAM)
        assert isinstance(parsed, Interval) and parsed.every.total_seconds() == seconds


@pytest.mark.parametrize(
    "text", ["every 5x", "every", "0 25 * * *", "* * * * * *", "yesterday", "every 0s", ""]
)
def test_what_is_neither_cron_nor_interval_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(text, AMSTERDAM)


def test_cron_aliases_are_accepted() -> None:
    assert isinstance(parse_schedule("@daily", AMSTERDAM), Cron)


# -- the loop ------------------------------------------------------------------------------


def test_an_every_15s_job_starts_15s_after_it_was_first_seen_and_every_15s_after(
    tmp_path: Path,
) -> None:
    clock = Clock("2026-05-01T10:00:00+00:00")
    sched, launcher = scheduler(
        tmp_path, clock, job("docs/incremental", "incremental", "every 15s")
    )
    assert sched.run_pending(clock.advance(seconds=14)) == ()
    assert sched.run_pending(clock.advance(seconds=1)) == ("docs/incremental",)
    launcher.children["docs/incremental"].end()
    assert sched.run_pending(clock.advance(seconds=14)) == ()
    assert sched.run_pending(clock.advance(seconds=1)) == ("docs/incremental",)


def test_a_job_firing_while_it_still_runs_is_coalesced_not_started_twice(tmp_path: Path) -> None:
    clock = Clock("2026-05-01T10:00:00+00:00")
    sched, launcher = scheduler(tmp_path, clock, job("docs/full", "full", "every 10s"))
    sched.run_pending(clock.advance(seconds=10))
    sched.run_pending(clock.advance(seconds=10))  # still running
    sched.run_pending(clock.advance(seconds=10))
    assert launcher.names() == ["docs/full"]
    state = sched.states()["docs/full"]
    assert state.coalesced == 2 and "coalesced" in state.notes[-1]
    assert [r.job for r in sched.running()] == ["docs/full"]
    launcher.children["docs/full"].end()
    sched.run_pending(clock.advance(seconds=1))
    assert sched.running() == () and sched.states()["docs/full"].last_status == "ok"
    sched.run_pending(clock.advance(seconds=9))
    assert launcher.names() == ["docs/full", "docs/full"]


def downtime(tmp_path: Path, catch_up: bool) -> tuple[Scheduler, Launcher, Clock]:
    """A nightly job; the service runs one night, is down for three, and starts again."""
    clock = Clock("2026-05-01T00:00:00+00:00")
    nightly = job("emr/full", "full", "0 2 * * *", catch_up=catch_up)
    first, launcher = scheduler(tmp_path, clock, nightly)
    first.run_pending(clock.advance(hours=2))
    launcher.children["emr/full"].end()
    first.run_pending(clock.advance(minutes=1))
    first.stop(timeout_s=1)
    clock.advance(days=3, hours=10)
    again, launcher = scheduler(tmp_path, clock, nightly)
    return again, launcher, clock


def test_runs_missed_while_the_service_was_down_run_once_at_start_up(tmp_path: Path) -> None:
    sched, launcher, clock = downtime(tmp_path, catch_up=True)
    assert sched.run_pending(clock.now) == ("emr/full",)
    launcher.children["emr/full"].end()
    sched.run_pending(clock.advance(minutes=1))
    assert launcher.names() == ["emr/full"]  # three missed nights, one run
    nxt = sched.listing()[0].next_run
    assert nxt == at("2026-05-05T02:00:00+00:00")


def test_without_catch_up_missed_runs_are_skipped_and_noted(tmp_path: Path) -> None:
    sched, _, clock = downtime(tmp_path, catch_up=False)
    assert sched.run_pending(clock.now) == ()
    state = sched.states()["emr/full"]
    assert state.missed == 1 and state.last_missed == at("2026-05-04T02:00:00+00:00")
    assert sched.run_pending(at("2026-05-05T02:00:00+00:00")) == ("emr/full",)


def test_a_firing_a_few_seconds_late_still_runs_without_catch_up(tmp_path: Path) -> None:
    clock = Clock("2026-05-01T00:00:00+00:00")
    sched, _ = scheduler(tmp_path, clock, job("emr/full", "full", "0 2 * * *", catch_up=False))
    assert sched.run_pending(clock.advance(hours=2, seconds=5)) == ("emr/full",)


def test_jobs_of_one_repository_run_one_at_a_time_backups_first_prune_last(tmp_path: Path) -> None:
    clock = Clock("2026-05-01T00:00:00+00:00")
    jobs = [
        job("repository/main/prune", "prune", "0 2 * * *"),
        job("emr/drill", "drill", "0 2 * * *", source="emr"),
        job("repository/main/check", "check", "0 2 * * *"),
        job("emr/copy", "copy", "0 2 * * *", source="emr", secondary="offsite"),
        job("emr/full", "full", "0 2 * * *", source="emr"),
        job("lab/full", "full", "0 2 * * *", repository="lab", source="lab"),
    ]
    sched, launcher = scheduler(tmp_path, clock, *jobs)
    assert set(sched.run_pending(clock.advance(hours=2))) == {"emr/full", "lab/full"}
    order = []
    while True:
        running = [name for name, c in launcher.children.items() if c.outcome is None]
        if not running:
            break
        assert len([n for n in running if n != "lab/full"]) == 1, running
        for name in running:
            launcher.children[name].end()
        order += sched.run_pending(clock.advance(seconds=1))
    assert order == ["emr/copy", "repository/main/check", "emr/drill", "repository/main/prune"]


def test_a_waiting_backup_keeps_a_prune_due_later_from_jumping_ahead(tmp_path: Path) -> None:
    """A copy to offsite holds both repositories; the backup of main waits for it, and the
    prune of main, due while it waits, waits behind the backup."""
    clock = Clock("2026-05-01T00:00:00+00:00")
    copy = job("emr/copy", "copy", "0 1 * * *", source="emr", secondary="offsite")
    backup = job("emr/full", "full", "0 2 * * *", source="emr")
    prune = job("repository/main/prune", "prune", "5 2 * * *")
    sched, launcher = scheduler(tmp_path, clock, copy, backup, prune)
    sched.run_pending(clock.advance(hours=1))
    sched.run_pending(clock.advance(hours=1))
    sched.run_pending(clock.advance(minutes=5))
    assert launcher.names() == ["emr/copy"]
    assert {row.name for row in sched.listing() if row.waiting} == {
        "emr/full",
        "repository/main/prune",
    }
    launcher.children["emr/copy"].end()
    assert sched.run_pending(clock.advance(seconds=1)) == ("emr/full",)


def test_state_is_kept_in_a_file_that_a_reader_understands(tmp_path: Path) -> None:
    clock = Clock("2026-05-01T00:00:00+00:00")
    sched, launcher = scheduler(tmp_path, clock, job("emr/check", "check", "every 1m"))
    sched.run_pending(clock.advance(minutes=1))
    launcher.children["emr/check"].end("failed", "3 error(s) found: pack 1a2b is missing")
    sched.run_pending(clock.advance(seconds=5))
    saved = statefile.load(sched.state_path)["emr/check"]
    assert saved.last_status == "failed" and saved.last_run_ids == ("run-emr/check",)
    assert saved.last_error == "3 error(s) found: pack 1a2b is missing"
    assert saved.last_start == at("2026-05-01T00:01:00+00:00")
    assert saved.last_end == at("2026-05-01T00:01:05+00:00")
    assert not list(sched.state_path.parent.glob(".*.tmp"))


def test_a_job_the_previous_service_left_running_is_recorded_interrupted(tmp_path: Path) -> None:
    clock = Clock("2026-05-01T00:00:00+00:00")
    sched, _ = scheduler(tmp_path, clock, job("emr/full", "full", "every 1m"))
    sched.run_pending(clock.advance(minutes=1))
    # The service dies here (no stop); its child is gone when it comes back.
    again, _ = scheduler(tmp_path, clock, job("emr/full", "full", "every 1m"))
    state = again.states()["emr/full"]
    assert state.current is None and state.last_status == "interrupted"


def test_stop_interrupts_running_jobs_and_fires_nothing_more(tmp_path: Path) -> None:
    clock = Clock("2026-05-01T00:00:00+00:00")
    sched, launcher = scheduler(tmp_path, clock, job("emr/full", "full", "every 1m"))
    sched.run_pending(clock.advance(minutes=1))
    aborted = sched.stop(timeout_s=5)
    assert [(a.job, a.run_id, a.killed) for a in aborted] == [("emr/full", "run-emr/full", False)]
    assert launcher.children["emr/full"].signals == ["INT"] and launcher.cleaned == []
    assert sched.states()["emr/full"].last_status == "interrupted"
    assert sched.run_pending(clock.advance(minutes=5)) == ()


def test_stop_kills_what_does_not_end_in_time_and_removes_its_locks(tmp_path: Path) -> None:
    clock = Clock("2026-05-01T00:00:00+00:00")
    stubborn = Launcher(obeys_interrupt=False)
    sched, launcher = scheduler(
        tmp_path, clock, job("emr/full", "full", "every 1m"), launcher=stubborn
    )
    sched.run_pending(clock.advance(minutes=1))
    (aborted,) = sched.stop(timeout_s=0.2)
    assert aborted.killed and launcher.children["emr/full"].signals == ["INT", "KILL"]
    assert launcher.cleaned == ["emr/full"]
    assert sched.states()["emr/full"].last_status == "killed"


def test_a_started_scheduler_fires_on_its_own_thread(tmp_path: Path) -> None:
    """The loop on its thread against the real clock: an every-1s job starts."""
    launcher = Launcher()
    launcher.clock = Clock("2026-05-01T00:00:00+00:00")  # only what the launches are noted at
    sched = Scheduler(
        [job("docs/full", "full", "every 1s")],
        lambda: dt.datetime.now(UTC),
        tmp_path / "state.json",
        launcher,
        poll_s=0.05,
    )
    sched.start()
    deadline = time.monotonic() + 30
    while not launcher.started and time.monotonic() < deadline:
        time.sleep(0.02)
    sched.stop(timeout_s=5)
    assert launcher.names()[:1] == ["docs/full"]
