"""Alerts to people: `[notify]` of medvault.toml turned into channels (monitoring/notify.py),
`deliver` for what the alert rules decided, and `alerts_test`, the test alert a procedure asks
for once a week.

Every channel is tried whatever the others do (in parallel: a slow mail server does not hold
up Slack), and each target's outcome is in the report. Files named by `webhook_file`,
`slack_file` and `smtp_password_file` are read at every delivery, so a rotated token needs no
restart of `serve`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from medvault.errors import NotificationFailed, UsageError
from medvault.monitoring.events import FIRING, SEVERITIES, AlertEvent
from medvault.monitoring.notify import (
    AlertmanagerChannel,
    Channel,
    Delivery,
    EmailChannel,
    SlackChannel,
    SmtpServer,
    WebhookChannel,
)

if TYPE_CHECKING:
    from medvault.config import NotifySettings
    from medvault.service.session import Session

TEST_RULE = "alert_test"


@dataclass(frozen=True)
class DeliveryReport:
    """What became of a batch of events: one `Delivery` per channel and target, in the order
    of `[notify]` (webhook, slack, email, alertmanager)."""

    events: int
    deliveries: tuple[Delivery, ...]

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.deliveries)

    @property
    def failed(self) -> tuple[Delivery, ...]:
        return tuple(d for d in self.deliveries if not d.ok)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "deliveries": [asdict(d) for d in self.deliveries],
        }


@dataclass(frozen=True)
class AlertTestOptions:
    # The severity the test alert carries: by default the one that pages, so the test
    # travels the route a real critical alert takes.
    severity: str = "critical"


def deliver(session: Session, events: Sequence[AlertEvent]) -> DeliveryReport:
    """Send `events` through every configured channel. A failure is a one-line note on the
    session (no URL token, no password), never an exception: `serve` goes on."""
    report = _send(session, events)
    for delivery in report.failed:
        session.notes.append(
            f"notification not delivered: {delivery.channel} {delivery.target}: {delivery.error}"
        )
    return report


def alerts_test(session: Session, options: AlertTestOptions | None = None) -> DeliveryReport:
    """A clearly marked test alert through every channel; a run (`alert-test`) in the run
    history and the audit trail, failed when any channel failed. No repository is opened: the
    audit record waits in this host's outbox for the next run that opens the default
    repository."""
    options = options or AlertTestOptions()
    with session.run("alert-test") as run:
        if options.severity not in SEVERITIES:
            raise UsageError(f"--severity {options.severity!r}: one of {', '.join(SEVERITIES)}")
        settings = session.settings.notify if session.configured else None
        if settings is None or not settings.configured:
            raise UsageError(
                "no notification channel is configured: add webhook, slack, email or "
                "alertmanager to [notify] in medvault.toml"
            )
        event = alert_test_event(session.caller.host, options.severity)
        report = _send(session, [event])
        run.details["deliveries"] = [
            {"channel": d.channel, "target": d.target, "ok": d.ok, "error": d.error}
            for d in report.deliveries
        ]
        if not report.ok:
            first = report.failed[0]
            run.fail(
                f"{len(report.failed)} of {len(report.deliveries)} notification target(s) "
                f"failed; {first.channel} {first.target}: {first.error}"
            )
        return report


def failed(report: DeliveryReport) -> NotificationFailed:
    """The error a shell ends with when a channel failed (exit 26)."""
    return NotificationFailed(
        f"{len(report.failed)} of {len(report.deliveries)} notification target(s) did not deliver"
    )


def alert_test_event(
    host: str, severity: str = "critical", now: dt.datetime | None = None
) -> AlertEvent:
    started = now or dt.datetime.now(dt.UTC)
    return AlertEvent(
        key=TEST_RULE,
        rule=TEST_RULE,
        severity=severity,
        state=FIRING,
        summary=f"medvault alert test from {host}",
        message=(
            "A test alert sent by `medvault alerts test` to show that alerts reach their "
            "receivers. Nothing is wrong; no action is needed."
        ),
        started=started,
        test=True,
    )


# -- channels from [notify] -------------------------------------------------------------------


def _send(session: Session, events: Sequence[AlertEvent]) -> DeliveryReport:
    if not events or not session.configured:
        return DeliveryReport(len(events), ())
    channels, unusable = build_channels(session.settings.notify, session.caller.host, session.notes)
    if not channels and not unusable:
        return DeliveryReport(len(events), ())
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(channels)))) as pool:
        sent = list(pool.map(lambda channel: channel.send(events), channels))
    order = {"webhook": 0, "slack": 1, "email": 2, "alertmanager": 3}
    deliveries = sorted([*sent, *unusable], key=lambda d: order.get(d.channel, 9))
    return DeliveryReport(len(events), tuple(deliveries))


def build_channels(
    settings: NotifySettings, host: str | None, notes: list[str] | None = None
) -> tuple[list[Channel], list[Delivery]]:
    """The channels `[notify]` names, and a failed delivery for each that cannot be built (a
    URL or password file that cannot be read). A secret file open to group or others is a
    note in `notes`."""
    notes = notes if notes is not None else []
    channels: list[Channel] = []
    unusable: list[Delivery] = []
    timeout = settings.timeout_s
    webhooks, slacks = list(settings.webhook), list(settings.slack)
    for kind, path, urls in (
        ("webhook", settings.webhook_file, webhooks),
        ("slack", settings.slack_file, slacks),
    ):
        if path is not None:
            try:
                urls += read_urls(path, notes)
            except UsageError as exc:
                unusable.append(Delivery(kind, f"{kind}_file {path}", False, 0, str(exc)))
    for url in webhooks:
        channels.append(WebhookChannel(url, timeout, host, settings.external_url))
    for url in slacks:
        channels.append(SlackChannel(url, timeout, host))
    if settings.email:
        try:
            channels.append(_email_channel(settings, host, notes))
        except UsageError as exc:
            target = ", ".join(settings.email)
            unusable.append(Delivery("email", target, False, 0, str(exc)))
    if settings.alertmanager is not None:
        channels.append(
            AlertmanagerChannel(settings.alertmanager, timeout, host, settings.external_url)
        )
    return channels, unusable


def read_urls(path: str, notes: list[str]) -> list[str]:
    """The URLs of a `webhook_file` or `slack_file`: one a line; blank lines and lines
    starting with # are skipped. A bad line is named by its number, never quoted."""
    from medvault.config import check_http_url

    _note_if_open_to_others(path, "URL file", notes)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"cannot read it: {reason}") from None
    urls = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            urls.append(check_http_url(f"line {number}", line))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if not urls:
        raise UsageError("holds no URL")
    return urls


def _email_channel(settings: NotifySettings, host: str | None, notes: list[str]) -> EmailChannel:
    assert settings.smtp_url is not None and settings.smtp_from is not None  # config.py
    parts = urlsplit(settings.smtp_url)
    implicit = parts.scheme == "smtps"
    password = None
    if settings.smtp_password_file is not None:
        _note_if_open_to_others(settings.smtp_password_file, "smtp_password_file", notes)
        password = _read_password(settings.smtp_password_file)
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    if implicit:
        tls = "implicit"
    elif settings.smtp_starttls is False:  # config.py allows it on the loopback address only
        tls = "none"
    server = SmtpServer(
        host=parts.hostname or "",
        port=parts.port or (465 if implicit else 587),
        tls=tls,
        user=unquote(parts.username) if parts.username is not None else None,
        password=password,
        ca_file=settings.smtp_ca_file,
        timeout=settings.timeout_s,
    )
    return EmailChannel(server, settings.smtp_from, tuple(settings.email), host)


def _read_password(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8"
        raise UsageError(f"smtp_password_file {path}: cannot read it: {reason}") from None
    password = text.rstrip("\r\n")
    if not password:
        raise UsageError(f"smtp_password_file {path}: is empty")
    return password


def _note_if_open_to_others(path: str, what: str, notes: list[str]) -> None:
    """As for password and key files (credentials.py): still used, with a note."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return  # the read that follows says what is wrong
    note = (
        f"{what} {path} is open to group or others (mode {mode:04o}); make it private: "
        f"chmod 600 {path}"
    )
    if mode & 0o077 and note not in notes:
        notes.append(note)
