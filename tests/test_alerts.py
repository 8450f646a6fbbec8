"""Alerts: the rules over constructed observations (each threshold at, below and above its
levels), the states an alert goes through (fired, repeated, severity changed, silenced,
resolved once), kept in a real catalog (SQLite and PostgreSQL) between evaluations, and
silences through the CLI, recorded in `runs` and in the audit trail."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from tests.test_catalog import catalog_url, make_session, pg_catalog  # noqa: F401
from tests.test_service_runs import Kept

from conftest import Cli
from medvault.config import AlertSettings, Settings
from medvault.errors import UsageError
from medvault.monitoring.alerts import (
    AlertState,
    Condition,
    Silence,
    advance,
    conditions,
)
from medvault.monitoring.events import FIRING, RESOLVED
from medvault.monitoring.facts import (
    JobFacts,
    Observations,
    RepositoryFacts,
    RunningJob,
    SourceFacts,
)
from medvault.service.alerting import (
    AlertHistoryOptions,
    SilenceOptions,
    SilencesOptions,
    UnsilenceOptions,
    alert_history,
    evaluate,
    silence,
    silences,
    unsilence,
)

NOW = dt.datetime(2026, 3, 9, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)
DEFAULTS = AlertSettings()


def source(name: str = "emr", **changes: object) -> SourceFacts:
    """A healthy source: backed up an hour ago, sizes steady."""
    facts = SourceFacts(
        source=name,
        kind="files",
        repository="vault",
        tier=None,
        rpo_s=None,
        rto_s=None,
        last_backup=NOW - HOUR,
        last_backup_bytes=100 * 2**20,
        previous_backup_bytes=(100 * 2**20,) * 7,
    )
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]


def repository(**changes: object) -> RepositoryFacts:
    facts = RepositoryFacts(
        name="vault",
        url="/srv/vault",
        opened=True,
        error=None,
        stored_bytes=10,
        capacity_bytes=100,
        used_ratio=0.10,
        key_created=None,
        clock_skew_s=None,
        last_check=None,
    )
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]


def job(operation: str = "backup", failures: int = 0, **changes: object) -> JobFacts:
    facts = JobFacts(
        source="emr",
        operation=operation,
        last_status="failed" if failures else "ok",
        last_ended=NOW - HOUR,
        last_error="disk on fire" if failures else None,
        last_success=NOW - HOUR,
        consecutive_failures=failures,
        last_duration_s=60.0,
    )
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]


def observe(
    *sources: SourceFacts,
    repos: tuple[RepositoryFacts, ...] = (),
    jobs: tuple[JobFacts, ...] = (),
    running: tuple[RunningJob, ...] = (),
) -> Observations:
    return Observations(NOW, sources or (source(),), repos or (repository(),), jobs, running)


def fired(observations: Observations, settings: AlertSettings = DEFAULTS) -> dict[str, str]:
    """key -> severity of every condition."""
    return {c.key: c.severity for c in conditions(observations, settings)}


def test_healthy_observations_fire_nothing() -> None:
    assert fired(observe(jobs=(job(),))) == {}


# -- backup_stale -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "expected"),
    [(HOUR * 26 - MINUTE, None), (HOUR * 26, "critical"), (HOUR * 27, "critical")],
)
def test_no_backup_for_26_hours_is_critical(age: dt.timedelta, expected: str | None) -> None:
    found = fired(observe(source(last_backup=NOW - age)))
    assert found.get("backup_stale:emr") == expected


def test_an_rpo_shorter_than_26_hours_is_the_limit() -> None:
    four_hours = 4 * 3600.0
    assert fired(observe(source(last_backup=NOW - 3 * HOUR, rpo_s=four_hours))) == {}
    late = conditions(observe(source(last_backup=NOW - 5 * HOUR, rpo_s=four_hours)), DEFAULTS)
    assert [(c.key, c.severity) for c in late] == [("backup_stale:emr", "critical")]
    assert "RPO" in late[0].message
    # A longer RPO does not lift the 26 h.
    assert "backup_stale:emr" in fired(observe(source(last_backup=NOW - 27 * HOUR, rpo_s=7e5)))


def test_a_source_never_backed_up_is_critical() -> None:
    (never,) = conditions(observe(source(last_backup=None, last_backup_bytes=None)), DEFAULTS)
    assert (never.key, never.severity, never.summary) == (
        "backup_stale:emr",
        "critical",
        "emr: never backed up",
    )


def test_a_successful_backup_job_newer_than_the_snapshot_counts() -> None:
    old = source(last_backup=NOW - 30 * HOUR)
    assert fired(observe(old, jobs=(job(last_success=NOW - HOUR),))) == {}


def test_backup_max_age_is_configurable() -> None:
    settings = AlertSettings(backup_max_age="2h")
    assert fired(observe(source(last_backup=NOW - 3 * HOUR)), settings) == {
        "backup_stale:emr": "critical"
    }


# -- job_failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, None), (1, "warning"), (2, "critical"), (3, "emergency"), (9, "emergency")],
)
def test_consecutive_failures_of_a_job(failures: int, expected: str | None) -> None:
    found = fired(observe(jobs=(job("backup", failures),)))
    assert found.get("job_failures:emr:backup") == expected


def test_failures_of_a_repository_wide_job_and_other_operations() -> None:
    found = fired(
        observe(
            jobs=(
                job("prune", 2, source=None),
                job("wal-push", 1),
                job("restore", 5),  # not a job of the schedule: a person's attempt
            )
        )
    )
    assert found == {"job_failures:-:prune": "critical", "job_failures:emr:wal-push": "warning"}


def test_failure_levels_are_configurable() -> None:
    settings = AlertSettings(failures_warning=2, failures_critical=4, failures_emergency=6)
    assert fired(observe(jobs=(job("backup", 1),)), settings) == {}
    assert fired(observe(jobs=(job("backup", 4),)), settings) == {
        "job_failures:emr:backup": "critical"
    }


# -- backup_running_long ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("running_for", "expected"),
    [(2 * HOUR - MINUTE, None), (2 * HOUR, "warning"), (5 * HOUR, "warning")],
)
def test_a_backup_running_longer_than_2_hours_warns(
    running_for: dt.timedelta, expected: str | None
) -> None:
    running = (
        RunningJob("emr", "backup", NOW - running_for, "r1"),
        RunningJob("emr", "check", NOW - 9 * HOUR),  # a long check is no backup
    )
    assert fired(observe(running=running)).get("backup_running_long:emr") == expected
    assert len(fired(observe(running=running))) == (1 if expected else 0)


# -- storage_full -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (0.7999, None),
        (0.80, "warning"),
        (0.85, "warning"),
        (0.90, "critical"),
        (0.9499, "critical"),
        (0.95, "emergency"),
        (1.0, "emergency"),
        (None, None),
    ],
)
def test_storage_full(ratio: float | None, expected: str | None) -> None:
    found = fired(observe(repos=(repository(used_ratio=ratio),)))
    assert found.get("storage_full:vault") == expected


# -- WAL --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lag_s", "expected"),
    [
        (None, None),
        (299, None),
        (300, "warning"),
        (599, "warning"),
        (600, "critical"),
        (1799, "critical"),
        (1800, "emergency"),
        (86400, "emergency"),
    ],
)
def test_wal_archive_lag(lag_s: float | None, expected: str | None) -> None:
    found = fired(observe(source(kind="postgres", wal_lag_s=lag_s)))
    assert found.get("wal_lag:emr") == expected


def test_archiver_failures_are_critical() -> None:
    failing = source(kind="postgres", archiver_failing=True, archiver_error="exit code 5")
    (alert,) = conditions(observe(failing), DEFAULTS)
    assert (alert.key, alert.severity) == ("archiver_failing:emr", "critical")
    assert "exit code 5" in alert.message


# -- sizes ------------------------------------------------------------------------------------


def test_a_backup_below_min_size_warns_and_the_source_overrides_the_default() -> None:
    mb = 10**6  # "1MB": sizes count kB, MB, GB in powers of 1000 (KiB, MiB in 1024)
    small = source(last_backup_bytes=mb - 1, previous_backup_bytes=(mb - 1,) * 7)
    assert fired(observe(small)) == {}  # no min_size anywhere
    with_default = AlertSettings(min_size="1MB")
    assert fired(observe(small), with_default) == {"backup_too_small:emr": "warning"}
    exact = dataclasses.replace(small, last_backup_bytes=mb)
    assert fired(observe(exact), with_default) == {}
    # The source's own min_size (gathered from [source.emr] min_size) comes first.
    assert fired(observe(dataclasses.replace(small, min_size=1024)), with_default) == {}


def test_settings_give_a_sources_min_size_else_the_default() -> None:
    settings = Settings(
        alerts=AlertSettings(min_size="1MB"),
        source={
            "emr": {"kind": "files", "paths": ["/srv/emr"], "min_size": "100MB"},
            "lab": {"kind": "files", "paths": ["/srv/lab"]},
        },
    )
    assert settings.backup_min_size("emr") == 100 * 10**6
    assert settings.backup_min_size("lab") == 10**6
    assert Settings().backup_min_size("lab") is None


@pytest.mark.parametrize(
    ("size", "expected"),
    [(50, None), (150, None), (49, "warning"), (151, "warning"), (0, "warning")],
)
def test_more_than_half_off_the_mean_of_the_last_seven_warns(
    size: int, expected: str | None
) -> None:
    # Eight before it: only the seven newest make the mean (100); the eighth would pull it.
    before = (100,) * 7 + (10_000,)
    found = fired(observe(source(last_backup_bytes=size, previous_backup_bytes=before)))
    assert found.get("backup_size_changed:emr") == expected


def test_the_mean_of_fewer_than_seven_backups_is_of_those_there_are() -> None:
    assert fired(observe(source(last_backup_bytes=100, previous_backup_bytes=()))) == {}
    two = source(last_backup_bytes=100, previous_backup_bytes=(60, 80))  # mean 70: +43%
    assert fired(observe(two)) == {}
    one = source(last_backup_bytes=100, previous_backup_bytes=(60,))  # +67%
    assert fired(observe(one)) == {"backup_size_changed:emr": "warning"}
    settings = AlertSettings(size_deviation=80)
    assert fired(observe(one), settings) == {}


# -- drills, checks, repositories, clocks -----------------------------------------------------


def test_a_failed_drill_is_critical_and_a_later_pass_clears_it() -> None:
    assert fired(observe(source(last_drill_ok=False))) == {"drill_failed:emr": "critical"}
    assert fired(observe(jobs=(job("drill", 1),))) == {"drill_failed:emr": "critical"}
    passed = job("drill", 0)
    assert fired(observe(source(last_drill_ok=False), jobs=(passed,))) == {}
    refused = job("drill", 0, last_status="refused")  # never ran: a lock was held
    assert fired(observe(jobs=(refused,))) == {}


def test_a_failed_check_is_critical() -> None:
    check = job("check", 1, source=None)
    found = fired(observe(repos=(repository(last_check=check),), jobs=(check,)))
    assert found == {"check_failed:vault": "critical"}  # and not job_failures as well


def test_a_repository_or_key_that_cannot_be_opened_is_critical() -> None:
    broken = repository(opened=False, error="no key slot opens with the credential given")
    (alert,) = conditions(observe(repos=(broken,)), DEFAULTS)
    assert (alert.key, alert.severity, alert.repository) == (
        "repository_unavailable:vault",
        "critical",
        "vault",
    )
    assert "no key slot" in alert.message


def test_clock_skew_is_critical() -> None:
    assert fired(observe(repos=(repository(clock_skew_s=900.0),))) == {
        "clock_skew:vault": "critical"
    }


# -- the state machine ------------------------------------------------------------------------


def wal(severity: str) -> Condition:
    return Condition("wal_lag:emr", "wal_lag", severity, f"emr: WAL {severity}", "m", source="emr")


def states_of(step_states: tuple[AlertState, ...]) -> dict[str, AlertState]:
    return {s.key: s for s in step_states}


REPEAT = 4 * HOUR


def test_firing_repeat_severity_change_and_resolution_sent_once() -> None:
    first = advance({}, [wal("warning")], [], NOW, REPEAT)
    assert [(e.key, e.state, e.severity) for e in first.events] == [
        ("wal_lag:emr", FIRING, "warning")
    ]
    assert [t.kind for t in first.transitions] == ["fired"]
    state = states_of(first.states)

    quiet = advance(state, [wal("warning")], [], NOW + REPEAT - MINUTE, REPEAT)
    assert quiet.events == () and quiet.transitions == ()

    repeated = advance(states_of(quiet.states), [wal("warning")], [], NOW + REPEAT, REPEAT)
    assert [(e.state, e.severity, e.started) for e in repeated.events] == [(FIRING, "warning", NOW)]
    assert repeated.transitions == ()  # a repeat is no transition

    later = NOW + REPEAT + MINUTE
    worse = advance(states_of(repeated.states), [wal("critical")], [], later, REPEAT)
    assert [(e.state, e.severity) for e in worse.events] == [(FIRING, "critical")]
    assert [t.kind for t in worse.transitions] == ["severity_changed"]

    resolved = advance(states_of(worse.states), [], [], later + MINUTE, REPEAT)
    (event,) = resolved.events
    assert (event.state, event.severity, event.ended) == (RESOLVED, "critical", later + MINUTE)
    assert [t.kind for t in resolved.transitions] == ["resolved"] and resolved.states == ()

    after = advance(states_of(resolved.states), [], [], later + 2 * MINUTE, REPEAT)
    assert after.events == () and after.transitions == ()


def test_the_same_alert_twice_in_one_reading_is_one_alert_at_its_worst() -> None:
    step = advance({}, [wal("warning"), wal("emergency"), wal("critical")], [], NOW, REPEAT)
    assert [(e.key, e.severity) for e in step.events] == [("wal_lag:emr", "emergency")]
    assert len(step.states) == 1


def test_a_silence_holds_an_alert_back_and_it_is_sent_when_the_silence_ends() -> None:
    hush = Silence("s1", "wal_lag", "emr", NOW + 2 * HOUR)
    held = advance({}, [wal("warning")], [hush], NOW, REPEAT)
    assert held.events == ()
    assert [(t.kind, t.silence) for t in held.transitions] == [("fired", None), ("silenced", "s1")]
    (state,) = held.states
    assert state.silenced_by == "s1" and state.last_sent is None

    still = advance(states_of(held.states), [wal("critical")], [hush], NOW + HOUR, REPEAT)
    assert still.events == ()  # not even a severity change
    assert [t.kind for t in still.transitions] == ["severity_changed"]

    ended = advance(states_of(still.states), [wal("critical")], [hush], NOW + 2 * HOUR, REPEAT)
    assert [(e.state, e.severity, e.started) for e in ended.events] == [(FIRING, "critical", NOW)]
    assert [t.kind for t in ended.transitions] == ["unsilenced"]


def test_a_silence_over_an_alert_already_sent_sends_it_again_when_it_ends() -> None:
    sent = advance({}, [wal("warning")], [], NOW, REPEAT)
    hush = Silence("s1", "wal_lag", None, NOW + HOUR)  # every source
    held = advance(states_of(sent.states), [wal("warning")], [hush], NOW + MINUTE, REPEAT)
    assert held.events == ()
    again = advance(states_of(held.states), [wal("warning")], [], NOW + HOUR, REPEAT)
    assert [e.state for e in again.events] == [FIRING]


def test_a_silence_of_another_source_or_rule_holds_nothing_back() -> None:
    others = [
        Silence("a", "wal_lag", "lab", NOW + HOUR),
        Silence("b", "backup_stale", "emr", NOW + HOUR),
    ]
    step = advance({}, [wal("warning")], others, NOW, REPEAT)
    assert [e.key for e in step.events] == ["wal_lag:emr"]


def test_an_alert_resolved_under_a_silence_is_sent_resolved_only_if_it_was_sent() -> None:
    hush = Silence("s1", "wal_lag", "emr", NOW + HOUR)
    never_sent = advance({}, [wal("warning")], [hush], NOW, REPEAT)
    gone = advance(states_of(never_sent.states), [], [hush], NOW + MINUTE, REPEAT)
    assert gone.events == () and [t.kind for t in gone.transitions] == ["resolved"]

    sent = advance({}, [wal("warning")], [], NOW, REPEAT)
    held = advance(states_of(sent.states), [wal("warning")], [hush], NOW + MINUTE, REPEAT)
    gone = advance(states_of(held.states), [], [hush], NOW + 2 * MINUTE, REPEAT)
    assert [e.state for e in gone.events] == [RESOLVED]


# -- kept in the catalog ----------------------------------------------------------------------


def write_config(path: Path, catalog: str, repo: Path | None = None) -> Path:
    text = f"""
[repository.vault]
url = "{repo or path.parent / "vault"}"

[source.emr]
kind = "files"
paths = ["/srv/emr"]
repository = "vault"

[alerts]
repeat_interval = "1h"

[catalog]
url = "{catalog}"
"""
    path.write_text(text)
    return path


def test_states_and_history_persist_across_evaluations(tmp_path: Path, catalog_url: str) -> None:  # noqa: F811
    config = write_config(tmp_path / "medvault.toml", catalog_url)
    kept = Kept()
    session = make_session(None, config)
    session.observers.append(kept)
    late = NOW - 30 * HOUR
    stale = observe(source(last_backup=late), jobs=(job("backup", 2, last_success=late),))

    first = evaluate(session, stale, now=NOW)
    assert {a.key for a in first.firing} == {"backup_stale:emr", "job_failures:emr:backup"}
    assert {(e.key, e.state) for e in first.events} == {
        ("backup_stale:emr", FIRING),
        ("job_failures:emr:backup", FIRING),
    }
    # Each transition is an `alert` run, for `runs` and the audit trail.
    assert sorted(r.details["key"] for r in kept.records if r.operation == "alert") == [
        "backup_stale:emr",
        "job_failures:emr:backup",
    ]

    # Another session (the next minute of serve, another process): nothing new to send.
    second = evaluate(make_session(None, config), stale, now=NOW + MINUTE)
    assert second.events == () and second.transitions == ()
    assert {a.started for a in second.firing} == {NOW}

    # A look (`medvault alerts`) keeps nothing and uses up no repeat.
    look = evaluate(make_session(None, config), stale, now=NOW + HOUR, record=False)
    assert len(look.events) == 2
    repeat = evaluate(make_session(None, config), stale, now=NOW + HOUR)
    assert len(repeat.events) == 2 and repeat.transitions == ()

    fixed = observe(jobs=(job("backup", 0),))
    resolved = evaluate(make_session(None, config), fixed, now=NOW + 2 * HOUR)
    assert {(e.key, e.state) for e in resolved.events} == {
        ("backup_stale:emr", RESOLVED),
        ("job_failures:emr:backup", RESOLVED),
    }
    assert resolved.firing == ()
    again = evaluate(make_session(None, config), fixed, now=NOW + 3 * HOUR)
    assert again.events == ()

    history = alert_history(make_session(None, config), AlertHistoryOptions()).entries
    assert [(h.key, h.transition) for h in history if h.rule == "backup_stale"] == [
        ("backup_stale:emr", "resolved"),
        ("backup_stale:emr", "fired"),
    ]
    since = alert_history(make_session(None, config), AlertHistoryOptions(since=NOW + HOUR))
    assert {h.transition for h in since.entries} == {"resolved"}


def test_a_silence_in_the_catalog_holds_back_alerts_until_lifted(
    tmp_path: Path,
    catalog_url: str,  # noqa: F811
) -> None:
    config = write_config(tmp_path / "medvault.toml", catalog_url)
    session = make_session(None, config)
    held = silence(
        session,
        SilenceOptions("backup_stale", "emr", "2h", "restoring the EMR server"),
        now=NOW,
    ).silence
    assert (held.until, held.user) == (NOW + 2 * HOUR, "dr.smith")
    stale = observe(source(last_backup=NOW - 30 * HOUR))
    result = evaluate(make_session(None, config), stale, now=NOW + MINUTE)
    assert result.events == () and result.firing == ()
    assert [(a.key, a.silenced_by) for a in result.silenced] == [("backup_stale:emr", held.id)]

    listed = silences(make_session(None, config), SilencesOptions(), now=NOW + MINUTE)
    assert [s.id for s in listed.silences] == [held.id]
    unsilence(make_session(None, config), UnsilenceOptions(held.id[:6]), now=NOW + HOUR)
    assert silences(make_session(None, config), SilencesOptions(), now=NOW + HOUR).silences == ()
    (lifted,) = silences(make_session(None, config), SilencesOptions(all=True)).silences
    assert lifted.ended == NOW + HOUR and lifted.ended_by == "dr.smith@backup-1"

    sent = evaluate(make_session(None, config), stale, now=NOW + HOUR + MINUTE)
    assert [(e.key, e.state) for e in sent.events] == [("backup_stale:emr", FIRING)]
    kinds = [h.transition for h in alert_history(session, AlertHistoryOptions()).entries]
    assert kinds == ["unsilenced", "silenced", "fired"]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (SilenceOptions("backup_late", None, "2h", "x"), "unknown alert rule 'backup_late'"),
        (SilenceOptions("wal_lag", None, "2h", "  "), "needs --reason"),
        (SilenceOptions("wal_lag", None, "soon", "x"), "'soon' is not a duration"),
        (SilenceOptions("wal_lag", None, "31d", "x"), "at most 30d ([alerts] max_silence)"),
        (SilenceOptions("wal_lag", "billing", "2h", "x"), "no [source.billing]"),
    ],
)
def test_a_bad_silence_is_refused_and_recorded(
    tmp_path: Path, options: SilenceOptions, says: str
) -> None:
    config = write_config(tmp_path / "medvault.toml", f"sqlite:///{tmp_path / 'c.db'}")
    kept = Kept()
    session = make_session(None, config)
    session.observers.append(kept)
    with pytest.raises(UsageError, match=None) as refused:
        silence(session, options)
    assert says in str(refused.value) and "\n" not in str(refused.value)
    assert [(r.operation, r.status) for r in kept.records] == [("alert-silence", "refused")]


def test_max_silence_may_allow_more(tmp_path: Path) -> None:
    config = write_config(tmp_path / "medvault.toml", f"sqlite:///{tmp_path / 'c.db'}")
    config.write_text(config.read_text().replace('repeat_interval = "1h"', 'max_silence = "90d"'))
    result = silence(make_session(None, config), SilenceOptions("wal_lag", None, "60d", "move"))
    assert result.silence.until - result.silence.created == dt.timedelta(days=60)


# -- through the CLI, recorded in runs and in the audit trail ----------------------------------


def configured_cli(tmp_path: Path) -> Cli:
    vault = tmp_path / "vault"
    config = write_config(tmp_path / "medvault.toml", f"sqlite:///{tmp_path / 'c.db'}", vault)
    cli = Cli("vault", tmp_path, location=vault)
    cli.env["MEDVAULT_CONFIG"] = str(config)
    del cli.env["MEDVAULT_REPOSITORY"]
    cli("init", "--repo", "vault")
    return cli


def test_a_silence_is_recorded_in_runs_and_in_the_audit_trail(tmp_path: Path) -> None:
    cli = configured_cli(tmp_path)
    done = cli(
        "alerts", "silence", "backup_stale", "--source", "emr", "--for", "2h",
        "--reason", "EMR server moves racks", "--json",
    )  # fmt: skip
    held = json.loads(done.stdout)
    assert (held["rule"], held["source"], held["reason"]) == (
        "backup_stale",
        "emr",
        "EMR server moves racks",
    )
    listed = json.loads(cli("alerts", "silences", "--json").stdout)
    assert [s["id"] for s in listed] == [held["id"]]

    runs = json.loads(cli("runs", "--json", "--operation", "alert-silence").stdout)
    (run,) = runs
    assert (run["status"], run["source"], run["justification"]) == (
        "ok",
        "emr",
        "EMR server moves racks",
    )
    assert run["details"]["silence"] == held["id"] and run["repository"] == str(cli.repo)

    cli("alerts", "unsilence", held["id"])
    exported = cli("audit", "export", "--since", "1d").stdout.splitlines()
    records = [json.loads(line) for line in exported]
    sealed = [(r["operation"], r["details"].get("silence")) for r in records]
    assert ("alert-silence", held["id"]) in sealed
    assert ("alert-unsilence", held["id"]) in sealed
    assert json.loads(cli("alerts", "silences", "--json").stdout) == []
    history = cli("alerts", "history").stdout
    assert history.splitlines()[-1] == "0 transition(s)"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["wal_lag", "--for", "2h"], "--reason"),
        (["wal_lag", "--for", "2h", "--reason", ""], "needs --reason"),
        (["wal_lag", "--for", "two hours", "--reason", "x"], "is not a duration"),
        (["wal_lag", "--for", "1y", "--reason", "x"], "max_silence"),
        (["nosuchrule", "--for", "2h", "--reason", "x"], "unknown alert rule"),
    ],
)
def test_bad_silence_input_is_one_line_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    cli = Cli(tmp_path / "vault", tmp_path)
    done = cli("alerts", "silence", *args, check=False)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and done.stderr.strip().count("\n") == 0
    assert "Traceback" not in done.stderr


def test_unsilence_of_an_unknown_silence_is_one_line_exit_2(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "vault", tmp_path)
    done = cli("alerts", "unsilence", "feedface", check=False)
    assert done.returncode == 2 and "no silence 'feedface'" in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_alerts_lists_what_fires_now(tmp_path: Path) -> None:
    pytest.importorskip("medvault.service.observe")
    cli = configured_cli(tmp_path)
    found = json.loads(cli("alerts", "--json").stdout)
    assert [a["key"] for a in found["firing"]] == ["backup_stale:emr"]
    assert "backup_stale:emr" in cli("alerts").stdout


def test_catalog_rebuild_keeps_silences_and_alert_history(tmp_path: Path) -> None:
    cli = configured_cli(tmp_path)
    cli("alerts", "silence", "wal_lag", "--for", "1h", "--reason", "failover drill")
    session = make_session(None, Path(cli.env["MEDVAULT_CONFIG"]))
    evaluate(session, observe(source(last_backup=None)), now=dt.datetime.now(dt.UTC))
    before = cli("alerts", "history", "--json").stdout
    assert "backup_stale:emr" in before
    cli("catalog", "rebuild")
    assert [s["reason"] for s in json.loads(cli("alerts", "silences", "--json").stdout)] == [
        "failover drill"
    ]
    assert cli("alerts", "history", "--json").stdout == before
    assert "alert-silence" in cli("runs", "--operation", "alert-silence").stdout


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ('[alerts]\nmin_size = "lots"', "alerts.min_size: 'lots' is not a size"),
        ('[alerts]\nrepeat_interval = "often"', "alerts.repeat_interval: 'often' is not a"),
        ("[alerts]\nstorage_warning = 120", "alerts.storage_warning"),
        ("[alerts]\nfailures_warning = 3\nfailures_critical = 2", "failures_critical: must lie"),
        ('[alerts]\nwal_lag_critical = "1h"', "wal_lag_critical: must lie"),
        ('[alerts]\nevaluate_every = "0s"', "evaluate_every: must be longer than 0s"),
        ("[alerts]\nsize_window = 0", "alerts.size_window"),
        ('[source.emr]\nkind = "files"\npaths = ["/x"]\nmin_size = "1.5 GBs"', "source.emr.min_size"),
    ],
)
def test_bad_alert_settings_name_the_key_in_one_line(
    tmp_path: Path, section: str, says: str
) -> None:
    config = tmp_path / "medvault.toml"
    config.write_text(section + "\n")
    cli = Cli(tmp_path / "vault", tmp_path)
    done = cli("--config", str(config), "alerts", "silences", check=False)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert done.stderr.strip().count("\n") == 0
