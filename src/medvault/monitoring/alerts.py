"""Alert rules and the states of alerts, as pure functions.

`conditions` judges one reading of the facts (facts.Observations) against the `[alerts]`
thresholds and says what is wrong now: one `Condition` per alert, each with a stable key
(its rule and what it is about: `backup_stale:emr`, `storage_full:vault`), so the same
problem read a minute later is the same alert. `advance` takes the alerts' states after the
previous evaluation, the conditions of this one, the silences in force and the time, and
says what to send (a new alert, a changed severity, a repeat once `repeat_interval` has
passed, a resolution once), what the states are now, and which transitions to record.
The service (service/alerting.py) reads and keeps the states and silences in the catalog.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from medvault.clocks import describe_span
from medvault.monitoring.events import FIRING, RESOLVED, SEVERITIES, AlertEvent

if TYPE_CHECKING:
    from medvault.config import AlertSettings
    from medvault.monitoring.facts import JobFacts, Observations, RepositoryFacts, SourceFacts

WARNING, CRITICAL, EMERGENCY = SEVERITIES
# rule, severity, summary, message -> a Condition about one source or repository
_Make = Callable[[str, str, str, str], "Condition"]

# Every rule, with what it watches (docs/alerts.md has the thresholds).
RULES: dict[str, str] = {
    "backup_stale": "no successful backup of a source for backup_max_age or its tier's RPO",
    "job_failures": "consecutive failures of a job (a source's backup, prune, copy, wal-push)",
    "backup_running_long": "a backup still running after running_max",
    "storage_full": "repository storage in use",
    "wal_lag": "age of the newest archived WAL segment",
    "archiver_failing": "PostgreSQL's archiver reports failures",
    "backup_too_small": "a backup smaller than min_size",
    "backup_size_changed": "a backup far off the mean of the ones before it",
    "drill_failed": "the last restore drill of a source failed",
    "check_failed": "the last check of a repository found damage or failed",
    "repository_unavailable": "a repository, or its key, cannot be opened",
    "clock_skew": "a repository holds records from a clock ahead of this host's",
}
# Operations judged by job_failures; drills and checks have rules of their own.
JOB_OPERATIONS = ("backup", "prune", "forget", "copy", "wal-push")
# Transitions recorded in the alert history.
FIRED, SEVERITY_CHANGED, SILENCED, UNSILENCED = (
    "fired",
    "severity_changed",
    "silenced",
    "unsilenced",
)


def alert_key(rule: str, *about: str | None) -> str:
    """`rule:what:…`; a part that is not known (a repository-wide job) is `-`."""
    return ":".join([rule, *(part or "-" for part in about)])


@dataclass(frozen=True)
class Condition:
    """Something wrong now: one alert's reading."""

    key: str
    rule: str
    severity: str
    summary: str
    message: str
    source: str | None = None
    repository: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


# -- rules ------------------------------------------------------------------------------------


def conditions(observations: Observations, settings: AlertSettings) -> list[Condition]:
    """Every alert firing in this reading, one per key (the most severe when two agree)."""
    found: list[Condition] = []
    jobs = {(j.source, j.operation): j for j in observations.jobs}
    now = observations.taken
    for source in observations.sources:
        found += _source_rules(source, jobs, now, settings)
    for job in observations.jobs:
        found += _job_failures(job, settings)
    max_running = settings.duration("running_max")
    for running in observations.running:
        age = now - running.started
        if running.operation == "backup" and age >= max_running:
            found.append(
                Condition(
                    alert_key("backup_running_long", running.source),
                    "backup_running_long",
                    WARNING,
                    f"{running.source or 'a backup'}: backup running for {describe_span(age)}",
                    f"a backup of {running.source or 'paths'} started {_iso(running.started)} "
                    f"is still running after {describe_span(age)} (running_max "
                    f"{settings.running_max})",
                    source=running.source,
                    labels={"run_id": running.run_id} if running.run_id else {},
                )
            )
    for repo in observations.repositories:
        found += _repository_rules(repo, settings)
    return _most_severe(found)


def _source_rules(
    source: SourceFacts,
    jobs: Mapping[tuple[str | None, str], JobFacts],
    now: dt.datetime,
    settings: AlertSettings,
) -> list[Condition]:
    found = []

    def condition(rule: str, severity: str, summary: str, message: str) -> Condition:
        return Condition(
            alert_key(rule, source.source),
            rule,
            severity,
            f"{source.source}: {summary}",
            message,
            source=source.source,
            repository=source.repository,
        )

    backup = jobs.get((source.source, "backup"))
    successes = [source.last_backup, backup.last_success if backup else None]
    last = max((t for t in successes if t is not None), default=None)
    limit, limit_text = settings.duration("backup_max_age"), settings.backup_max_age
    if source.rpo_s is not None and source.rpo_s < limit.total_seconds():
        limit = dt.timedelta(seconds=source.rpo_s)
        limit_text = f"the {source.tier or 'tier'} RPO of {describe_span(limit)}"
    if last is None:
        found.append(
            condition(
                "backup_stale",
                CRITICAL,
                "never backed up",
                f"source {source.source} has no successful backup at all",
            )
        )
    elif now - last >= limit:
        found.append(
            condition(
                "backup_stale",
                CRITICAL,
                f"no successful backup for {describe_span(now - last)}",
                f"the last successful backup of {source.source} was at {_iso(last)}, "
                f"{describe_span(now - last)} ago (limit {limit_text})",
            )
        )
    lag = source.wal_lag_s
    levels = [settings.duration(f"wal_lag_{s}").total_seconds() for s in SEVERITIES]
    severity = _level(lag, levels)
    if lag is not None and severity is not None:
        span = describe_span(dt.timedelta(seconds=lag))
        found.append(
            condition(
                "wal_lag",
                severity,
                f"WAL archive {span} behind",
                f"the newest archived WAL segment of {source.source} is {span} old "
                f"(warning {settings.wal_lag_warning}, critical {settings.wal_lag_critical}, "
                f"emergency {settings.wal_lag_emergency})",
            )
        )
    if source.archiver_failing:
        found.append(
            condition(
                "archiver_failing",
                CRITICAL,
                "PostgreSQL's archiver is failing",
                f"the archiver of {source.source} reports failures since its last success"
                + (f": {source.archiver_error}" if source.archiver_error else ""),
            )
        )
    found += _size_rules(source, settings, condition)
    drill = jobs.get((source.source, "drill"))
    drill_failed = (
        drill.last_status == "failed"
        if drill is not None and drill.last_status is not None
        else source.last_drill_ok is False
    )
    if drill_failed:
        error = drill.last_error if drill is not None else None
        found.append(
            condition(
                "drill_failed",
                CRITICAL,
                "the last restore drill failed",
                f"the last restore drill of {source.source} failed"
                + (f": {error}" if error else ""),
            )
        )
    return found


def _size_rules(source: SourceFacts, settings: AlertSettings, condition: _Make) -> list[Condition]:
    from medvault.sizes import parse_size

    found: list[Condition] = []
    size = source.last_backup_bytes
    if size is None:
        return found
    minimum = source.min_size
    if minimum is None and settings.min_size is not None:
        minimum = parse_size(settings.min_size)
    if minimum is not None and size < minimum:
        found.append(
            condition(
                "backup_too_small",
                WARNING,
                f"last backup only {_bytes(size)}",
                f"the last backup of {source.source} read {_bytes(size)}, less than its "
                f"min_size of {_bytes(minimum)}",
            )
        )
    before = source.previous_backup_bytes[: settings.size_window]
    mean = sum(before) / len(before) if before else 0.0
    if mean > 0 and abs(size - mean) / mean * 100 > settings.size_deviation:
        off = (size - mean) / mean * 100
        found.append(
            condition(
                "backup_size_changed",
                WARNING,
                f"last backup {off:+.0f}% off the mean of the {len(before)} before it",
                f"the last backup of {source.source} read {_bytes(size)}; the mean of the "
                f"{len(before)} successful backup(s) before it is {_bytes(round(mean))} "
                f"(size_deviation {settings.size_deviation:g}%)",
            )
        )
    return found


def _job_failures(job: JobFacts, settings: AlertSettings) -> list[Condition]:
    if job.operation not in JOB_OPERATIONS:
        return []
    levels = [
        float(settings.failures_warning),
        float(settings.failures_critical),
        float(settings.failures_emergency),
    ]
    severity = _level(float(job.consecutive_failures), levels)
    if severity is None:
        return []
    what = f"{job.operation} of {job.source}" if job.source else job.operation
    return [
        Condition(
            alert_key("job_failures", job.source, job.operation),
            "job_failures",
            severity,
            f"{what}: {job.consecutive_failures} consecutive failure(s)",
            f"the last {job.consecutive_failures} run(s) of {what} failed"
            + (f"; the last: {job.last_error}" if job.last_error else ""),
            source=job.source,
            labels={"operation": job.operation},
        )
    ]


def _repository_rules(repo: RepositoryFacts, settings: AlertSettings) -> list[Condition]:
    found = []

    def condition(rule: str, severity: str, summary: str, message: str) -> Condition:
        return Condition(
            alert_key(rule, repo.name),
            rule,
            severity,
            f"repository {repo.name}: {summary}",
            message,
            repository=repo.name,
        )

    if not repo.opened:
        found.append(
            condition(
                "repository_unavailable",
                CRITICAL,
                "cannot be opened",
                f"repository {repo.name} ({repo.url}) cannot be opened"
                + (f": {repo.error}" if repo.error else ""),
            )
        )
    ratio = repo.used_ratio
    levels = [settings.storage_warning, settings.storage_critical, settings.storage_emergency]
    severity = _level(ratio * 100 if ratio is not None else None, levels)
    if ratio is not None and severity is not None:
        found.append(
            condition(
                "storage_full",
                severity,
                f"storage {ratio * 100:.1f}% full",
                f"repository {repo.name} uses {ratio * 100:.1f}% of its storage"
                + (f" ({_bytes(repo.capacity_bytes)})" if repo.capacity_bytes else ""),
            )
        )
    if repo.clock_skew_s is not None and repo.clock_skew_s > 0:
        span = describe_span(dt.timedelta(seconds=repo.clock_skew_s))
        found.append(
            condition(
                "clock_skew",
                CRITICAL,
                f"a clock {span} ahead",
                f"repository {repo.name} holds records written {span} ahead of this host's "
                "clock: one of the hosts' clocks is wrong (check NTP)",
            )
        )
    check = repo.last_check
    if check is not None and check.last_status == "failed":
        found.append(
            condition(
                "check_failed",
                CRITICAL,
                "the last check failed",
                f"the last check of repository {repo.name} failed"
                + (f": {check.last_error}" if check.last_error else ""),
            )
        )
    return found


def _level(value: float | None, levels: Sequence[float]) -> str | None:
    """The highest severity whose threshold `value` reaches (None: below them all)."""
    if value is None:
        return None
    reached = [s for s, at in zip(SEVERITIES, levels, strict=True) if value >= at]
    return reached[-1] if reached else None


def _most_severe(found: Iterable[Condition]) -> list[Condition]:
    kept: dict[str, Condition] = {}
    for c in found:
        known = kept.get(c.key)
        if known is None or SEVERITIES.index(c.severity) > SEVERITIES.index(known.severity):
            kept[c.key] = c
    return list(kept.values())


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


# -- states -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertState:
    """A firing alert as kept between evaluations (a resolved one is kept no longer)."""

    key: str
    rule: str
    severity: str
    summary: str
    message: str
    started: dt.datetime
    source: str | None = None
    repository: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    last_sent: dt.datetime | None = None  # when it was last sent (None: never)
    sent_severity: str | None = None  # the severity it was last sent with
    silenced_by: str | None = None  # the silence that held it back at the last evaluation


@dataclass(frozen=True)
class Silence:
    """Alerts of `rule` (about `source`, or about anything) are not sent until `until`.
    For a repository's rules, `source` names the repository."""

    id: str
    rule: str
    source: str | None
    until: dt.datetime

    def matches(self, alert: Condition | AlertState) -> bool:
        if alert.rule != self.rule:
            return False
        about = alert.source if alert.source is not None else alert.repository
        return self.source is None or self.source == about


@dataclass(frozen=True)
class Transition:
    """A change in an alert's life, for the history an auditor reads."""

    key: str
    rule: str
    severity: str
    kind: str  # FIRED, SEVERITY_CHANGED, SILENCED, UNSILENCED, RESOLVED
    at: dt.datetime
    summary: str
    source: str | None = None
    repository: str | None = None
    silence: str | None = None  # SILENCED: the silence's id


@dataclass(frozen=True)
class Step:
    """What one evaluation decided."""

    states: tuple[AlertState, ...]  # every alert firing now, silenced or not
    events: tuple[AlertEvent, ...]  # to send now
    transitions: tuple[Transition, ...]


def advance(
    previous: Mapping[str, AlertState],
    current: Iterable[Condition],
    silences: Sequence[Silence],
    now: dt.datetime,
    repeat_interval: dt.timedelta,
) -> Step:
    """The next states, the events to send and the transitions to record.

    A firing alert is sent when it is new, when its severity changed since it was last sent,
    when `repeat_interval` has passed since, and when a silence that held it back ended.
    A silenced alert keeps its state and is not sent. A resolved alert is sent once, if it
    was ever sent (even under a silence now: it closes what receivers were told), and its
    state ends."""
    states: list[AlertState] = []
    events: list[AlertEvent] = []
    transitions: list[Transition] = []
    seen = set()
    for condition in _most_severe(current):
        seen.add(condition.key)
        before = previous.get(condition.key)
        silence = next((s.id for s in silences if s.until > now and s.matches(condition)), None)
        state = AlertState(
            key=condition.key,
            rule=condition.rule,
            severity=condition.severity,
            summary=condition.summary,
            message=condition.message,
            started=before.started if before is not None else now,
            source=condition.source,
            repository=condition.repository,
            labels=dict(condition.labels),
            last_sent=before.last_sent if before is not None else None,
            sent_severity=before.sent_severity if before is not None else None,
            silenced_by=silence,
        )

        def note(kind: str, state: AlertState = state, silence: str | None = None) -> None:
            transitions.append(_transition(state, kind, now, silence))

        if before is None:
            note(FIRED)
        elif before.severity != state.severity:
            note(SEVERITY_CHANGED)
        if silence is not None and (before is None or before.silenced_by is None):
            note(SILENCED, silence=silence)
        elif silence is None and before is not None and before.silenced_by is not None:
            note(UNSILENCED, silence=before.silenced_by)
        due = silence is None and (
            state.last_sent is None
            or state.sent_severity != state.severity
            or (before is not None and before.silenced_by is not None)
            or now - state.last_sent >= repeat_interval
        )
        if due:
            state = replace(state, last_sent=now, sent_severity=state.severity)
            events.append(_event(state, FIRING, None))
        states.append(state)
    for key, gone in previous.items():
        if key in seen:
            continue
        transitions.append(_transition(gone, RESOLVED, now, None))
        if gone.last_sent is not None:
            events.append(_event(gone, RESOLVED, now))
    return Step(tuple(states), tuple(events), tuple(transitions))


def _transition(state: AlertState, kind: str, at: dt.datetime, silence: str | None) -> Transition:
    return Transition(
        key=state.key,
        rule=state.rule,
        severity=state.severity,
        kind=kind,
        at=at,
        summary=state.summary,
        source=state.source,
        repository=state.repository,
        silence=silence,
    )


def _event(state: AlertState, status: str, ended: dt.datetime | None) -> AlertEvent:
    return AlertEvent(
        key=state.key,
        rule=state.rule,
        # A resolution names the severity receivers were last told of.
        severity=(state.sent_severity or state.severity) if status == RESOLVED else state.severity,
        state=status,
        summary=state.summary,
        message=state.message,
        started=state.started,
        ended=ended,
        source=state.source,
        repository=state.repository,
        labels=dict(state.labels),
    )
