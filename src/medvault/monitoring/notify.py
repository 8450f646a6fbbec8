"""The channels alerts go out through: a generic webhook (shaped as Alertmanager's own webhook
body, so receivers that parse that parse this), Slack, email and Alertmanager's API.

Pure transport over the standard library (urllib, smtplib): the service builds the channels
from `[notify]` and hands in events; a channel never raises, it returns a `Delivery` that says
ok or why not in one line. Webhook and Slack URLs carry tokens, so a channel names its target
as `scheme://host/…` only, and every error line is scrubbed of the URL and the password before
it leaves. Bodies are in docs/notifications.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from medvault import __version__
from medvault.monitoring.events import RESOLVED, AlertEvent

RECEIVER = "medvault"
# Alertmanager's webhook body gives a firing alert this zero time as its end.
ZERO_TIME = "0001-01-01T00:00:00Z"
SLACK_INTERVAL_S = 1.0  # Slack accepts about one message per second per webhook
SLACK_MAX_RETRIES = 3  # answers 429 before a message is given up
SLACK_MAX_WAIT_S = 30.0  # a longer Retry-After is not waited for: the delivery fails
_ERROR_BODY_CHARS = 120
_COLORS = {"warning": "#daa038", "critical": "#d00000", "emergency": "#7a0000"}
_LABEL_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class Delivery:
    """What one channel did with a batch of events for one target."""

    channel: str  # webhook, slack, email, alertmanager
    target: str  # as it may be shown: scheme://host/…, or the addresses
    ok: bool
    sent: int = 0  # messages the target accepted
    error: str | None = None  # one line, no secret


class Channel(Protocol):
    kind: str

    @property
    def target(self) -> str: ...

    def send(self, events: Sequence[AlertEvent]) -> Delivery: ...


# -- shared pieces --------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """A URL as it may appear in output and logs: scheme, host and port; the path (where
    webhooks keep their tokens) replaced by an ellipsis."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(malformed URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}/…"


def rfc3339(moment: dt.datetime) -> str:
    """UTC, to the millisecond, with a Z (a naive time is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def labels_of(event: AlertEvent, host: str | None) -> dict[str, str]:
    """What identifies the alert (Alertmanager deduplicates and groups by these): the rule
    as `alertname`, severity, source, repository, host, the rule's own labels."""
    labels = {"alertname": event.rule, "severity": event.severity}
    for name, value in (("source", event.source), ("repository", event.repository)):
        if value:
            labels[name] = value
    if host:
        labels["host"] = host
    for name, value in event.labels.items():
        clean = _LABEL_NAME.sub("_", name)
        if clean and not clean[0].isdigit() and value:
            labels.setdefault(clean, str(value))
    if event.test:
        labels["test"] = "true"
    return labels


def annotations_of(event: AlertEvent) -> dict[str, str]:
    return {"summary": _headline(event), "description": event.message}


def _headline(event: AlertEvent) -> str:
    return f"TEST: {event.summary}" if event.test else event.summary


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Scrubber:
    """Takes secrets out of an error line: a receiver's message or an exception may quote
    the URL it was given."""

    def __init__(self, *secrets: str | None) -> None:
        found: list[str] = []
        for secret in secrets:
            if not secret:
                continue
            found.append(secret)
            if "://" in secret:
                path = urlsplit(secret).path
                if len(path) > 1:
                    found.append(path)
        self.secrets = sorted(set(found), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "…")
        return _one_line(text)


def _reason(exc: BaseException, timeout: float) -> str:
    """An exception of urllib, ssl, smtplib or the socket as one plain line."""
    if isinstance(exc, urllib.error.HTTPError):
        body = ""
        try:
            body = _one_line(exc.read(_ERROR_BODY_CHARS * 2).decode("utf-8", "replace"))
        except Exception:  # the answer's body is a courtesy: the status says enough
            body = ""
        said = f": {body[:_ERROR_BODY_CHARS]}" if body else ""
        return f"HTTP {exc.code} {exc.reason}{said}"
    if isinstance(exc, urllib.error.URLError):
        return (
            _reason(exc.reason, timeout)
            if isinstance(exc.reason, BaseException)
            else str(exc.reason)
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error
        said = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        return f"SMTP {exc.smtp_code} {said}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "every recipient refused: " + ", ".join(sorted(exc.recipients))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirected POST would arrive as a GET without its body: fail instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def post_json(url: str, body: Any, timeout: float) -> None:
    """POST `body` as JSON; any answer but 2xx raises (urllib.error.HTTPError)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": f"medvault/{__version__}"},
        method="POST",
    )
    with _OPENER.open(request, timeout=timeout) as answer:
        answer.read()


# -- webhook ----------------------------------------------------------------------------------


def webhook_body(
    event: AlertEvent, *, host: str | None = None, external_url: str | None = None
) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) for one alert, and medvault's own fields
    beside it (rule, severity, state, source, repository, summary, message, key, test)."""
    labels = labels_of(event, host)
    annotations = annotations_of(event)
    alert = {
        "status": event.state,
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(event.started),
        "endsAt": rfc3339(event.ended) if event.ended is not None else ZERO_TIME,
        "generatorURL": external_url or "",
        "fingerprint": hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16],
    }
    return {
        "version": "4",
        "receiver": RECEIVER,
        "status": event.state,
        "alerts": [alert],
        "groupLabels": {"alertname": event.rule},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url or "",
        "groupKey": f'{{}}:{{alertname="{event.rule}"}}',
        "truncatedAlerts": 0,
        "key": event.key,
        "rule": event.rule,
        "severity": event.severity,
        "state": event.state,
        "source": event.source,
        "repository": event.repository,
        "summary": event.summary,
        "message": event.message,
        "started": rfc3339(event.started),
        "ended": rfc3339(event.ended) if event.ended is not None else None,
        "host": host,
        "test": event.test,
    }


@dataclass
class WebhookChannel:
    """One POST per event."""

    url: str = field(repr=False)
    timeout: float = 10.0
    host: str | None = None
    external_url: str | None = None
    kind: str = "webhook"

    @property
    def target(self) -> str:
        return shown_url(self.url)

    def send(self, events: Sequence[AlertEvent]) -> Delivery:
        scrub = _Scrubber(self.url)
        sent = 0
        for event in events:
            body = webhook_body(event, host=self.host, external_url=self.external_url)
            try:
                post_json(self.url, body, self.timeout)
            except Exception as exc:
                return self._failed(sent, scrub(_reason(exc, self.timeout)))
            sent += 1
        return Delivery(self.kind, self.target, True, sent)

    def _failed(self, sent: int, reason: str) -> Delivery:
        return Delivery(self.kind, self.target, False, sent, reason)


# -- Slack ------------------------------------------------------------------------------------


class Pacer:
    """At most one message per `interval` to each key (a webhook URL), across threads and
    calls; `hold` pushes a key's next slot back (after a 429)."""

    def __init__(
        self,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, key: str) -> None:
        with self._lock:
            now = self.clock()
            slot = max(now, self._next.get(key, now))
            self._next[key] = slot + self.interval
        if slot > now:
            self.sleep(slot - now)

    def hold(self, key: str, seconds: float) -> None:
        with self._lock:
            self._next[key] = max(self._next.get(key, 0.0), self.clock() + seconds)


SLACK_PACER = Pacer(SLACK_INTERVAL_S)


def slack_body(event: AlertEvent, *, host: str | None = None) -> dict[str, Any]:
    """Slack's incoming-webhook body: `text` (the notification's line, and all that clients
    without attachments show) and one attachment coloured by severity; Mattermost and
    Rocket.Chat read the same."""
    state = "RESOLVED" if event.state == RESOLVED else event.severity.upper()
    about = f" {event.source}" if event.source else ""
    test = "TEST " if event.test else ""
    fields = [
        {"title": "Rule", "value": event.rule, "short": True},
        {"title": "Severity", "value": event.severity, "short": True},
        {"title": "State", "value": event.state, "short": True},
    ]
    for title, value in (("Source", event.source), ("Repository", event.repository)):
        if value:
            fields.append({"title": title, "value": value, "short": True})
    if host:
        fields.append({"title": "Host", "value": host, "short": True})
    since = f"since {rfc3339(event.started)}"
    if event.ended is not None:
        since += f", resolved {rfc3339(event.ended)}"
    return {
        "text": f"[medvault] {test}{state} {event.rule}{about}: {_headline(event)}",
        "attachments": [
            {
                "color": "good" if event.state == RESOLVED else _COLORS.get(event.severity),
                "fallback": _headline(event),
                "title": _headline(event),
                "text": event.message,
                "fields": fields,
                "footer": f"medvault · {since}",
                "ts": int(event.started.timestamp()),
            }
        ],
    }


@dataclass
class SlackChannel:
    """One message per event, paced to one a second per webhook; a 429 is retried after its
    Retry-After when that is short (SLACK_MAX_WAIT_S), SLACK_MAX_RETRIES times at most."""

    url: str = field(repr=False)
    timeout: float = 10.0
    host: str | None = None
    pacer: Pacer = field(default_factory=lambda: SLACK_PACER, repr=False)
    kind: str = "slack"

    @property
    def target(self) -> str:
        return shown_url(self.url)

    def send(self, events: Sequence[AlertEvent]) -> Delivery:
        scrub = _Scrubber(self.url)
        sent = 0
        for event in events:
            try:
                self._post(slack_body(event, host=self.host))
            except Exception as exc:
                reason = scrub(_reason(exc, self.timeout))
                return Delivery(self.kind, self.target, False, sent, reason)
            sent += 1
        return Delivery(self.kind, self.target, True, sent)

    def _post(self, body: dict[str, Any]) -> None:
        retries = 0
        while True:
            self.pacer.wait(self.url)
            try:
                post_json(self.url, body, self.timeout)
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 429 or retries >= SLACK_MAX_RETRIES:
                    raise
                wait = _retry_after(exc.headers.get("Retry-After"))
                if wait > SLACK_MAX_WAIT_S:
                    raise RuntimeError(
                        f"rate limited (HTTP 429), asked to wait {wait:g} s: longer than "
                        f"{SLACK_MAX_WAIT_S:g} s"
                    ) from None
                retries += 1
                self.pacer.hold(self.url, wait)


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header; one second when it is absent or a date."""
    try:
        return max(0.0, float(value)) if value is not None else SLACK_INTERVAL_S
    except ValueError:
        return SLACK_INTERVAL_S


# -- email ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpServer:
    """Where mail goes: `tls` is "starttls" (required: a server that does not offer it is a
    failed delivery, never a fallback to plain text), "implicit" (smtps://) or "none" (a
    relay on the loopback address only; config.py enforces that)."""

    host: str
    port: int
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # trusted instead of the system's CAs
    timeout: float = 10.0


def email_subject(event: AlertEvent) -> str:
    """`[medvault] CRITICAL backup_stale emr`; `RESOLVED` for a resolution, `TEST` first
    for a test."""
    state = "RESOLVED" if event.state == RESOLVED else event.severity.upper()
    about = f" {event.source}" if event.source else ""
    test = "TEST " if event.test else ""
    return _one_line(f"[medvault] {test}{state} {event.rule}{about}")


def email_text(event: AlertEvent, host: str | None = None) -> str:
    lines = []
    if event.test:
        lines += [
            "This is a test alert sent by `medvault alerts test`: nothing is wrong. It shows",
            "that alerts reach you through this channel.",
            "",
        ]
    lines += [_headline(event), "", event.message, ""]
    facts = [
        ("Rule", event.rule),
        ("Severity", event.severity),
        ("State", event.state),
        ("Source", event.source),
        ("Repository", event.repository),
        ("Host", host),
        ("Since", rfc3339(event.started)),
        ("Resolved", rfc3339(event.ended) if event.ended is not None else None),
        ("Alert", event.key),
    ]
    lines += [f"{name + ':':<12}{value}" for name, value in facts if value]
    return "\n".join(lines) + "\n"


def email_message(
    event: AlertEvent, sender: str, recipients: Sequence[str], host: str | None = None
) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = email_subject(event)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message.set_content(email_text(event, host))
    return message


@dataclass
class EmailChannel:
    """One connection per batch, one plain-text message per event to every recipient."""

    server: SmtpServer
    sender: str
    recipients: tuple[str, ...]
    host: str | None = None
    kind: str = "email"

    @property
    def target(self) -> str:
        return f"{', '.join(self.recipients)} via {self.server.host}:{self.server.port}"

    def send(self, events: Sequence[AlertEvent]) -> Delivery:
        scrub = _Scrubber(self.server.password)
        sent = 0
        try:
            with self._connect() as smtp:
                for event in events:
                    message = email_message(event, self.sender, self.recipients, self.host)
                    refused = smtp.send_message(message, self.sender, list(self.recipients))
                    if refused:
                        reason = "refused by the server: " + ", ".join(sorted(refused))
                        return Delivery(self.kind, self.target, False, sent, reason)
                    sent += 1
        except Exception as exc:
            reason = scrub(_reason(exc, self.server.timeout))
            return Delivery(self.kind, self.target, False, sent, reason)
        return Delivery(self.kind, self.target, True, sent)

    def _connect(self) -> smtplib.SMTP:
        server = self.server
        context = ssl.create_default_context(cafile=server.ca_file)
        smtp: smtplib.SMTP
        if server.tls == "implicit":
            smtp = smtplib.SMTP_SSL(
                server.host, server.port, timeout=server.timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(server.host, server.port, timeout=server.timeout)
        try:
            smtp.ehlo()
            if server.tls == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if server.user is not None:
                smtp.login(server.user, server.password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp


# -- Alertmanager -----------------------------------------------------------------------------


def alertmanager_body(
    events: Sequence[AlertEvent], *, host: str | None = None, external_url: str | None = None
) -> list[dict[str, Any]]:
    """`POST /api/v2/alerts`'s body. A firing alert has no endsAt: Alertmanager ends it
    itself after its resolve_timeout (5 min by default) unless it is sent again; a resolved
    one carries its end."""
    alerts = []
    for event in events:
        alert: dict[str, Any] = {
            "labels": labels_of(event, host),
            "annotations": annotations_of(event),
            "startsAt": rfc3339(event.started),
        }
        if event.state == RESOLVED:
            alert["endsAt"] = rfc3339(event.ended or dt.datetime.now(dt.UTC))
        if external_url:
            alert["generatorURL"] = external_url
        alerts.append(alert)
    return alerts


def alertmanager_url(base: str) -> str:
    """Alertmanager's alerts endpoint under its base URL (or the endpoint itself)."""
    if base.rstrip("/").endswith("/api/v2/alerts"):
        return base
    return base.rstrip("/") + "/api/v2/alerts"


@dataclass
class AlertmanagerChannel:
    """The whole batch in one POST."""

    url: str = field(repr=False)  # the base URL
    timeout: float = 10.0
    host: str | None = None
    external_url: str | None = None
    kind: str = "alertmanager"

    @property
    def target(self) -> str:
        return shown_url(self.url)

    def send(self, events: Sequence[AlertEvent]) -> Delivery:
        body = alertmanager_body(events, host=self.host, external_url=self.external_url)
        try:
            post_json(alertmanager_url(self.url), body, self.timeout)
        except Exception as exc:
            reason = _Scrubber(self.url)(_reason(exc, self.timeout))
            return Delivery(self.kind, self.target, False, 0, reason)
        return Delivery(self.kind, self.target, True, len(events))
