"""Scheduled jobs for real: the job runner in a child process against a real repository and
a files source, the scheduler launching it, `stop` during a backup, `medvault schedule`, a
random drill pick, bad schedules in medvault.toml."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import PASSWORD, Cli
from medvault.config import RepositorySettings
from medvault.repository.keys import Credential
from medvault.scheduler.loop import Scheduler
from medvault.service.jobs import find_job, jobs_from_settings, run_job, scheduler_for
from medvault.service.runs import Caller, RunRecord
from medvault.service.session import Session

MiB = 1024 * 1024


class Given:
    def primary(self, settings: RepositorySettings | None) -> Credential:
        return Credential(passphrase=PASSWORD.encode())

    def other(self, settings: RepositorySettings | None) -> Credential:
        return Credential(passphrase=PASSWORD.encode())


class Kept:
    def __init__(self) -> None:
        self.records: list[RunRecord] = []

    def run_ended(self, record: RunRecord) -> None:
        self.records.append(record)


def setup(tmp_path: Path, data: Path, schedule: str = 'full = "every 1s"') -> Cli:
    (tmp_path / "medvault.toml").write_text(
        f"""
[repository.main]
url = "{tmp_path / "repo"}"

[source.docs]
kind = "files"
paths = ["{data}"]

[source.docs.retention]
keep_last = 2

[source.docs.schedule]
{schedule}
drill_pick = "random:30d"
timezone = "Europe/Amsterdam"

[schedule]
check = "0 3 * * *"
"""
    )
    cli = Cli("", tmp_path, location=tmp_path / "repo")
    cli.env["MEDVAULT_REPOSITORY"] = ""
    cli("init")
    return cli


def session(tmp_path: Path, *observers: Kept) -> Session:
    return Session(
        credentials=Given(),
        caller=Caller.this_process("scheduler"),
        config=str(tmp_path / "medvault.toml"),
        observers=list(observers),
        state_dir=tmp_path / "medvault-state",
    )


def until(done: Callable[[], bool], what: str, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting: {what}")
        time.sleep(0.02)


def test_jobs_have_stable_names_from_the_configuration(make_tree, tmp_path: Path) -> None:
    setup(tmp_path, make_tree({"a": b"a"}), 'full = "0 2 * * 0"\nincremental = "every 15m"')
    jobs = jobs_from_settings(session(tmp_path).settings)
    assert [(j.name, j.kind, j.repository, j.timezone) for j in jobs] == [
        ("docs/full", "full", "main", "Europe/Amsterdam"),
        ("docs/incremental", "incremental", "main", "Europe/Amsterdam"),
        ("repository/main/check", "check", "main", "UTC"),
    ]


def test_the_runner_makes_a_real_snapshot_and_reports_its_run(make_tree, tmp_path: Path) -> None:
    cli = setup(
        tmp_path, make_tree({"letters/a.txt": b"dear colleague", "b.bin": os.urandom(9999)})
    )
    result = tmp_path / "result.json"
    command = [sys.executable, "-m", "medvault.cli.jobrun", "--config", "medvault.toml"]
    done = subprocess.run(
        [*command, "--job", "docs/full", "--result", str(result)],
        cwd=tmp_path,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("medvault: job docs/full: ok: snapshot ")
    doc = json.loads(result.read_text())
    assert doc["status"] == "ok" and doc["exit_code"] == 0
    (run,) = doc["runs"]
    assert run["operation"] == "backup" and run["status"] == "ok"
    (snap,) = json.loads(cli("snapshots", "--json").stdout)
    assert snap["source"] == "docs" and snap["type"] == "full"
    records = json.loads(cli("runs", "--json").stdout)
    ours = next(r for r in records if r["run_id"] == run["run_id"])
    assert ours["shell"] == "scheduler" and ours["status"] == "ok"


def test_an_unknown_job_is_one_line_and_exit_2(make_tree, tmp_path: Path) -> None:
    cli = setup(tmp_path, make_tree({"a": b"a"}))
    done = subprocess.run(
        [sys.executable, "-m", "medvault.cli.jobrun", "--config", "medvault.toml", "--job", "x/y"],
        cwd=tmp_path,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "medvault: error: no scheduled job 'x/y' in medvault.toml "
        "(jobs: docs/full, repository/main/check)"
    )


def launched(
    tmp_path: Path, cli: Cli, start: dt.datetime, env: dict[str, str] | None = None
) -> tuple[Scheduler, list[dt.datetime]]:
    now = [start]
    sched = scheduler_for(session(tmp_path), clock=lambda: now[0], env=cli.env | (env or {}))
    return sched, now


def test_the_scheduler_runs_a_job_as_a_child_and_schedule_shows_its_result(
    make_tree, tmp_path: Path
) -> None:
    cli = setup(tmp_path, make_tree({"a.txt": b"referral"}))
    start = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    sched, now = launched(tmp_path, cli, start)
    now[0] = start + dt.timedelta(seconds=1)
    assert sched.run_pending() == ("docs/full",)
    (running,) = sched.running()
    assert (running.job, running.source, running.operation) == ("docs/full", "docs", "backup")
    until(lambda: not sched.run_pending() and not sched.running(), "the backup to end")
    state = sched.states()["docs/full"]
    assert state.last_status == "ok", state
    (run_id,) = state.last_run_ids
    log = (tmp_path / "medvault-state" / "schedule" / "logs" / "docs_full.log").read_text()
    assert "medvault: job docs/full: ok: snapshot" in log and PASSWORD not in log

    listing = json.loads(cli("schedule", "--json").stdout)
    docs = next(job for job in listing["jobs"] if job["name"] == "docs/full")
    assert docs["last"]["status"] == "ok" and docs["last"]["run_id"] == run_id
    assert docs["timezone"] == "Europe/Amsterdam" and docs["running"] is False
    assert docs["next_run_local"].endswith("+02:00")
    check = next(job for job in listing["jobs"] if job["name"] == "repository/main/check")
    assert check["last"] is None and check["next_run"] == "2026-05-01T03:00:00+00:00"
    text = cli("schedule").stdout
    assert "docs/full" in text and "ok " in text and run_id in text
    sched.stop(timeout_s=10)


def locks(cli: Cli) -> list[str]:
    return os.listdir(cli.repo / "locks")


@pytest.mark.parametrize("patience", [60.0, 0.0])
def test_stop_during_a_backup_leaves_a_repository_that_checks_and_no_lock(
    make_tree, tmp_path: Path, patience: float
) -> None:
    """Asked to stop, the backup ends as interrupted and releases its lock; with no patience
    at all it is killed, and the scheduler removes the lock it left."""
    data = make_tree({f"scans/{n:03}.dcm": os.urandom(4 * MiB) for n in range(48)})
    cli = setup(tmp_path, data)
    start = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    # The backup holds still after its first pack, until the test has seen it there.
    pause = tmp_path / "pause"
    pause.mkdir()
    faults = {"MEDVAULT_FAULTS": f"writer.after-pack=pause:{pause}"}
    sched, now = launched(tmp_path, cli, start, faults)
    now[0] = start + dt.timedelta(seconds=1)
    sched.run_pending()
    until(lambda: (pause / "writer.after-pack.reached").exists(), "the backup's first pack")
    assert locks(cli) and [r.run_id is not None for r in sched.running()] == [True]
    (pause / "writer.after-pack.go").touch()
    (aborted,) = sched.stop(timeout_s=patience)
    assert aborted.job == "docs/full" and aborted.run_id is not None
    assert aborted.killed is (patience == 0)
    state = sched.states()["docs/full"]
    assert state.last_status == ("killed" if patience == 0 else "interrupted"), state
    assert locks(cli) == []
    cli("check")
    assert json.loads(cli("snapshots", "--json").stdout) == []
    assert sched.run_pending(start + dt.timedelta(hours=1)) == ()


def test_a_random_drill_pick_is_repeatable_from_its_recorded_seed(
    make_tree, tmp_path: Path
) -> None:
    data = make_tree({"a.txt": b"one"})
    cli = setup(tmp_path, data, 'drill = "every 30d"')
    for n in range(4):
        (data / "a.txt").write_bytes(f"version {n}".encode())
        cli("backup", "docs")
    kept = Kept()
    job = find_job(session(tmp_path), "docs/drill")
    picks = []
    for _ in range(2):
        done = run_job(session(tmp_path, kept), job, seed="night-of-1-may")
        assert done.status == "ok", done
        picks.append(kept.records[-1].snapshots)
    assert picks[0] == picks[1]
    pick = kept.records[-1].details["pick"]
    assert pick["seed"] == "night-of-1-may" and pick["candidates"] == 4


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ('full = "0 25 * * *"', "source.docs.schedule.full: '0 25 * * *' is not a valid cron"),
        ('full = "every 5 minutes"', "source.docs.schedule.full: 'every 5 minutes' is not an"),
        ('timezone = "Mars/Olympus"', "source.docs.schedule.timezone: 'Mars/Olympus' is not a"),
        ('logical = "@daily"', "source.docs.schedule.logical: a files source has no logical"),
        ('copy = "@daily"', "source.docs.schedule.copy: repository main has no secondary"),
        ('drill_pick = "sometimes"', "source.docs.schedule.drill_pick: 'sometimes': write"),
    ],
)
def test_a_bad_schedule_is_one_line_naming_the_key_and_exit_2(
    tmp_path: Path, schedule: str, message: str
) -> None:
    (tmp_path / "medvault.toml").write_text(
        f'[repository.main]\nurl = "{tmp_path}/repo"\n'
        f'[source.docs]\nkind = "files"\npaths = ["/srv"]\n[source.docs.schedule]\n{schedule}\n'
    )
    cli = Cli("", tmp_path)
    cli.env["MEDVAULT_REPOSITORY"] = ""
    done = cli("schedule", check=False)
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr


def test_a_repository_wide_schedule_needs_a_repository_it_can_name(tmp_path: Path) -> None:
    (tmp_path / "medvault.toml").write_text(
        f'[repository.a]\nurl = "{tmp_path}/a"\n[repository.b]\nurl = "{tmp_path}/b"\n'
        '[schedule]\ncheck = "@daily"\n'
    )
    cli = Cli("", tmp_path)
    cli.env["MEDVAULT_REPOSITORY"] = ""
    done = cli("schedule", check=False)
    assert done.returncode == 2
    assert "schedule: several repositories are configured (a, b)" in done.stderr


def test_a_streamed_postgres_source_cannot_schedule_incrementals(tmp_path: Path) -> None:
    """Without pgdata a physical backup is streamed, and a stream is always full: an
    incremental schedule would silently copy the whole cluster every time."""
    (tmp_path / "medvault.toml").write_text(
        f'[repository.main]\nurl = "{tmp_path}/repo"\n'
        '[source.emr]\nkind = "postgres"\ndsn = "host=db.clinic dbname=emr"\n'
        '[source.emr.schedule]\nincremental = "0 2 * * *"\n'
    )
    cli = Cli("", tmp_path)
    cli.env["MEDVAULT_REPOSITORY"] = ""
    done = cli("schedule", check=False)
    assert done.returncode == 2
    assert "source.emr.schedule.incremental: needs pgdata" in done.stderr
