"""Alerts: evaluate the rules over what `observe.gather` read, keep each alert's state in the
catalog, and silence alerts (docs/alerts.md).

`evaluate` is what `serve` calls every `[alerts] evaluate_every`: the rules
(monitoring/alerts.py) judge the observations, the states of the previous evaluation and the
silences in force decide what to send, and the new states and the transitions are kept in
the catalog. Each transition (fired, severity_changed, silenced, unsilenced, resolved) is
also a run of its own, `alert`, so it is in `medvault runs` and sealed into the audit trail
of the repository it is about. `medvault alerts` evaluates with `record=False`: it shows what
fires and keeps nothing, so a look never uses up a notification serve has still to send.

A silence is a run (`alert-silence`, `alert-unsilence`): who held back which alerts, until
when and why is sealed into the audit trail of the source's repository (or the default one).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from medvault.durations import format_duration, parse_duration
from medvault.errors import MedvaultError, UsageError
from medvault.monitoring.alerts import (
    RULES,
    AlertState,
    Silence,
    Transition,
    advance,
    conditions,
)
from medvault.monitoring.events import SEVERITIES, AlertEvent

if TYPE_CHECKING:
    from medvault.catalog.alerts import AlertStore
    from medvault.catalog.store import Catalog
    from medvault.config import AlertSettings
    from medvault.monitoring.facts import Observations
    from medvault.service.session import Session

ALERT_RUN = "alert"  # the run each transition is recorded as
DEFAULT_HISTORY_LIMIT = 100


@dataclass(frozen=True)
class ActiveAlert:
    """An alert firing now."""

    key: str
    rule: str
    severity: str
    summary: str
    message: str
    started: dt.datetime
    source: str | None
    repository: str | None
    labels: Mapping[str, str]
    silenced_by: str | None  # the silence holding it back, if any

    def event(self) -> AlertEvent:
        """The alert as a channel carries it, firing (serve tells Alertmanager again)."""
        from medvault.monitoring.events import FIRING

        return AlertEvent(
            key=self.key,
            rule=self.rule,
            severity=self.severity,
            state=FIRING,
            summary=self.summary,
            message=self.message,
            started=self.started,
            source=self.source,
            repository=self.repository,
            labels=dict(self.labels),
        )


@dataclass(frozen=True)
class AlertsResult:
    taken: dt.datetime  # the evaluation's time
    firing: tuple[ActiveAlert, ...]  # not silenced; most severe first
    silenced: tuple[ActiveAlert, ...]  # firing, held back by a silence
    events: tuple[AlertEvent, ...]  # to send now (new, changed, repeated, resolved)
    transitions: tuple[Transition, ...]  # recorded in the alert history (when recording)
    problems: tuple[str, ...]  # what the observations could not gather


def evaluate(
    session: Session,
    observations: Observations,
    *,
    now: dt.datetime | None = None,
    record: bool = True,
) -> AlertsResult:
    """Judge the observations; with `record`, keep the new states and the transitions in
    the catalog and record each transition as an `alert` run. The caller sends `events`."""
    now = now or observations.taken
    settings = _alert_settings(session)
    found = conditions(observations, settings)
    catalog = _catalog(session, required=record)
    try:
        store = _store(catalog) if catalog is not None else None
        previous = {s["key"]: _state(s) for s in store.states()} if store else {}
        active = store.silences(active_at=now) if store else []
        silences = [Silence(s["id"], s["rule"], s["source"], s["until"]) for s in active]
        step = advance(previous, found, silences, now, settings.duration("repeat_interval"))
        if record and store is not None:
            store.save(
                [asdict(s) for s in step.states], [_history_row(t) for t in step.transitions]
            )
    finally:
        if catalog is not None:
            catalog.close()
    if record:
        for transition in step.transitions:
            _record_transition(session, transition)
    alerts = sorted(
        (_active(s) for s in step.states),
        key=lambda a: (-SEVERITIES.index(a.severity), a.key),
    )
    return AlertsResult(
        taken=now,
        firing=tuple(a for a in alerts if a.silenced_by is None),
        silenced=tuple(a for a in alerts if a.silenced_by is not None),
        events=step.events,
        transitions=step.transitions,
        problems=observations.problems,
    )


def _record_transition(session: Session, transition: Transition) -> None:
    """One `alert` run: in `medvault runs`, and sealed into the audit trail of the
    repository it is about (in waiting in the outbox until a session opens it)."""
    with session.run(
        ALERT_RUN,
        source=transition.source,
        repository=_repository_url(session, transition.source, transition.repository),
    ) as run:
        run.details.update(
            key=transition.key,
            rule=transition.rule,
            severity=transition.severity,
            transition=transition.kind,
            summary=transition.summary,
        )
        if transition.silence is not None:
            run.details["silence"] = transition.silence


def _repository_url(session: Session, source: str | None, repository: str | None) -> str | None:
    """The URL of the repository an alert is about: its source's, the one it names, or the
    default; None when the configuration names none."""
    try:
        return session.repository_target(*_choice(session, source, repository))[0]
    except MedvaultError:
        return None


def _choice(
    session: Session, source: str | None, repository: str | None
) -> tuple[str | None, str | None]:
    """(source, repository name) as Session.open takes them: only those medvault.toml
    names, so that the repository's own settings (credentials) come along."""
    if not session.configured:
        return None, None
    settings = session.settings
    return (
        source if source in settings.source else None,
        repository if repository in settings.repository else None,
    )


# -- silences -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SilenceOptions:
    rule: str  # one of monitoring.alerts.RULES
    source: str | None  # only alerts about this source (or repository); None: every one
    duration: str  # how long: "2h", "3d"; at most [alerts] max_silence
    reason: str  # why: required, kept in the audit trail


@dataclass(frozen=True)
class SilenceInfo:
    id: str
    rule: str
    source: str | None
    created: dt.datetime
    until: dt.datetime
    reason: str
    user: str
    host: str
    run_id: str | None
    ended: dt.datetime | None  # lifted before `until`
    ended_by: str | None

    def active(self, now: dt.datetime) -> bool:
        return self.until > now and (self.ended is None or self.ended > now)


@dataclass(frozen=True)
class SilenceResult:
    silence: SilenceInfo
    repository: str | None  # where its run record is sealed (or waits to be)


def silence(
    session: Session, options: SilenceOptions, *, now: dt.datetime | None = None
) -> SilenceResult:
    """Hold back alerts of a rule (about one source, or all) for a bounded time, with a
    reason; recorded as an `alert-silence` run."""
    with session.run("alert-silence", source=options.source) as run:
        run.justification = options.reason
        run.details.update(rule=options.rule, duration=options.duration)
        settings = _alert_settings(session)
        if options.rule not in RULES:
            raise UsageError(
                f"unknown alert rule {options.rule!r}; the rules are: {', '.join(RULES)}"
            )
        if not options.reason.strip():
            raise UsageError("a silence needs --reason: say why these alerts may go unsent")
        span = _silence_span(options.duration, settings)
        _check_subject(session, options.source)
        run.repository = _open_for_record(session, options.source)
        moment = now or dt.datetime.now(dt.UTC)
        info = SilenceInfo(
            id=os.urandom(6).hex(),
            rule=options.rule,
            source=options.source,
            created=moment,
            until=moment + span,
            reason=options.reason.strip(),
            user=session.caller.user,
            host=session.caller.host,
            run_id=run.run_id,
            ended=None,
            ended_by=None,
        )
        with _open(session) as catalog:
            _store(catalog).add_silence(asdict(info))
        run.details.update(silence=info.id, until=info.until.isoformat(timespec="seconds"))
        return SilenceResult(info, run.repository)


@dataclass(frozen=True)
class UnsilenceOptions:
    id: str  # a silence's id, or a unique prefix of it (at least 4 characters)


def unsilence(
    session: Session, options: UnsilenceOptions, *, now: dt.datetime | None = None
) -> SilenceResult:
    """Lift a silence before its time; recorded as an `alert-unsilence` run."""
    with session.run("alert-unsilence") as run:
        run.details["silence"] = options.id
        moment = now or dt.datetime.now(dt.UTC)
        with _open(session) as catalog:
            store = _store(catalog)
            found = _find_silence(store.silences(), options.id)
            if not found.active(moment):
                raise UsageError(f"silence {found.id} is over already (since {_ended(found)})")
            run.source = found.source
            run.details.update(silence=found.id, rule=found.rule)
            run.repository = _open_for_record(session, found.source)
            by = f"{session.caller.user}@{session.caller.host}"
            store.end_silence(found.id, moment, by)
        ended = SilenceInfo(**{**asdict(found), "ended": moment, "ended_by": by})
        return SilenceResult(ended, run.repository)


@dataclass(frozen=True)
class SilencesOptions:
    all: bool = False  # also those over (expired or lifted)


@dataclass(frozen=True)
class SilencesResult:
    silences: tuple[SilenceInfo, ...]  # newest first


def silences(
    session: Session, options: SilencesOptions, *, now: dt.datetime | None = None
) -> SilencesResult:
    """The silences in force (with `all`, every one kept). A reading, not a run."""
    moment = now or dt.datetime.now(dt.UTC)
    with _open(session) as catalog:
        store = _store(catalog)
        rows = store.silences() if options.all else store.silences(active_at=moment)
    return SilencesResult(tuple(SilenceInfo(**row) for row in rows))


# -- history ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertHistoryOptions:
    since: dt.datetime | None = None
    rule: str | None = None
    source: str | None = None  # a source, or a repository's name
    limit: int = DEFAULT_HISTORY_LIMIT


@dataclass(frozen=True)
class HistoryEntry:
    at: dt.datetime
    key: str
    rule: str
    severity: str
    transition: str  # fired, severity_changed, silenced, unsilenced, resolved
    summary: str
    source: str | None
    repository: str | None
    silence_id: str | None


@dataclass(frozen=True)
class AlertHistoryResult:
    entries: tuple[HistoryEntry, ...]  # newest first
    catalog: str


def alert_history(session: Session, options: AlertHistoryOptions) -> AlertHistoryResult:
    """The alerts' transitions, newest first. A reading, not a run."""
    if options.limit < 1:
        raise UsageError("--limit must be at least 1")
    if options.rule is not None and options.rule not in RULES:
        raise UsageError(f"unknown alert rule {options.rule!r}; the rules are: {', '.join(RULES)}")
    with _open(session) as catalog:
        rows = _store(catalog).history(
            since=options.since, rule=options.rule, source=options.source, limit=options.limit
        )
        entries = tuple(HistoryEntry(**{k: v for k, v in r.items() if k != "id"}) for r in rows)
        return AlertHistoryResult(entries, catalog.url)


# -- helpers ------------------------------------------------------------------------------------


def _alert_settings(session: Session) -> AlertSettings:
    from medvault.config import AlertSettings

    return session.settings.alerts if session.configured else AlertSettings()


def _silence_span(text: str, settings: AlertSettings) -> dt.timedelta:
    try:
        span = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--for: {exc}") from None
    if span <= dt.timedelta(0):
        raise UsageError("--for: a silence must last longer than 0s")
    longest = settings.duration("max_silence")
    if span > longest:
        raise UsageError(
            f"--for {text.strip()}: a silence lasts at most {format_duration(longest)} "
            "([alerts] max_silence), so that one forgotten cannot hide an alert for good; "
            "silence again when it ends, or raise max_silence"
        )
    return span


def _check_subject(session: Session, source: str | None) -> None:
    if source is None or not session.configured:
        return
    settings = session.settings
    if source not in settings.source and source not in settings.repository:
        known = sorted(settings.source) + sorted(settings.repository)
        raise UsageError(
            f"--source {source!r}: no [source.{source}] or [repository.{source}] in "
            f"medvault.toml (known: {', '.join(known) or 'none'})"
        )


def _open_for_record(session: Session, about: str | None) -> str | None:
    """Open the repository a silence's record belongs in: its source's (or the repository
    `about` names), else the default. One that cannot be opened now (the very alert silenced
    may say so) does not stop the silence: its record waits in the state directory's outbox
    for the next command that opens it."""
    url = _repository_url(session, about, about)
    if url is None:
        return None
    try:
        return session.open(*_choice(session, about, about)).url
    except MedvaultError as exc:
        session.notes.append(
            f"the repository {url} could not be opened ({exc}); the record of this silence "
            "waits in the state directory until a later command opens it"
        )
        return url


def _find_silence(rows: list[dict[str, Any]], wanted: str) -> SilenceInfo:
    exact = [r for r in rows if r["id"] == wanted]
    matches = exact or ([r for r in rows if r["id"].startswith(wanted)] if len(wanted) >= 4 else [])
    if not matches:
        raise UsageError(f"no silence {wanted!r}: `medvault alerts silences --all` lists them")
    if len(matches) > 1:
        raise UsageError(f"{wanted!r} names {len(matches)} silences: give more of the id")
    return SilenceInfo(**matches[0])


def _ended(info: SilenceInfo) -> str:
    moment = info.ended if info.ended is not None and info.ended < info.until else info.until
    return moment.isoformat(timespec="seconds")


def _state(row: Mapping[str, Any]) -> AlertState:
    return AlertState(**dict(row))


def _active(state: AlertState) -> ActiveAlert:
    return ActiveAlert(
        key=state.key,
        rule=state.rule,
        severity=state.severity,
        summary=state.summary,
        message=state.message,
        started=state.started,
        source=state.source,
        repository=state.repository,
        labels=dict(state.labels),
        silenced_by=state.silenced_by,
    )


def _history_row(transition: Transition) -> dict[str, Any]:
    return {
        "at": transition.at,
        "key": transition.key,
        "rule": transition.rule,
        "severity": transition.severity,
        "transition": transition.kind,
        "summary": transition.summary,
        "source": transition.source,
        "repository": transition.repository,
        "silence_id": transition.silence,
    }


def _catalog(session: Session, *, required: bool) -> Catalog | None:
    """The session's catalog; without one (no state directory, no [catalog] url) a reading
    that keeps nothing goes on from no state at all."""
    from medvault.service.recording import catalog_url

    if not required and catalog_url(session) is None:
        return None
    return _open(session)


def _open(session: Session) -> Catalog:
    from medvault.service.history import open_catalog

    return open_catalog(session)


def _store(catalog: Catalog) -> AlertStore:
    from medvault.catalog.alerts import AlertStore

    return AlertStore(catalog)
