"""Notifications reach real receivers on the loopback address: an HTTP server taking webhook,
Slack and Alertmanager bodies, and an SMTP server (aiosmtpd) that demands STARTTLS and a login.
A failing channel costs one line naming its host, never the others' delivery, and no token or
password ever reaches the output."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.test_service_runs import Given, Kept

from conftest import Cli
from medvault.errors import ConfigError, NotificationFailed
from medvault.monitoring.events import FIRING, RESOLVED, AlertEvent
from medvault.service.notify import alerts_test, deliver
from medvault.service.runs import Caller
from medvault.service.session import Session

SMTP_USER = "alerts"
SMTP_PASSWORD = "s3cr3t-smtp-Pa55"
SLACK_PATH = "/services/T0CLINIC/B0ALERTS/xoxbSECRETtoken42"
WEBHOOK_PATH = "/hooks/wh-SECRET-9f8e7d"
HOST = "backup-1"
STARTED = dt.datetime(2024, 5, 1, 2, 0, 0, tzinfo=dt.UTC)
RFC3339 = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"


# -- receivers --------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class HttpReceiver:
    """Records every POST; `answers[path]` are the statuses (and Retry-After) to answer in
    turn before answering 200."""

    port: int
    received: list[Received] = field(default_factory=list)
    answers: dict[str, list[tuple[int, str | None]]] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Any]:
        return [r.body for r in self.received if r.path == path]


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    state = HttpReceiver(port=0)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state.received.append(Received(self.path, dict(self.headers), body))
                queued = state.answers.get(self.path)
                status, retry_after = queued.pop(0) if queued else (200, None)
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medvault test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp.pem", directory / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: Message
    tls: bool
    login: str | None


@dataclass
class SmtpReceiver:
    port: int
    ca_file: Path
    mechanism: str
    mails: list[Mail] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)  # (mechanism, user)


class Handler:
    def __init__(self, state: SmtpReceiver) -> None:
        self.state = state

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        login = session.auth_data.login.decode() if session.authenticated else None
        self.state.mails.append(
            Mail(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                message_from_bytes(envelope.original_content),
                # STARTTLS, or TLS from the start (smtps)
                session.ssl is not None
                or server.transport.get_extra_info("ssl_object") is not None,
                login,
            )
        )
        return "250 OK"


def smtp_receiver(tmp_path: Path, mechanism: str) -> Iterator[SmtpReceiver]:
    import ssl

    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    state = SmtpReceiver(port=free_port(), ca_file=cert, mechanism=mechanism)

    def authenticate(server: Any, session: Any, envelope: Any, used: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        )
        if ok:
            state.logins.append((used, SMTP_USER))
        return AuthResult(success=ok, handled=False, auth_data=data)

    others = [m for m in ("LOGIN", "PLAIN") if m != mechanism]
    controller = Controller(
        Handler(state),
        hostname="127.0.0.1",
        port=state.port,
        tls_context=context,
        require_starttls=True,
        auth_require_tls=True,
        auth_required=True,
        authenticator=authenticate,
        auth_exclude_mechanism=others,
    )
    controller.start()
    yield state
    controller.stop()


@pytest.fixture(params=["LOGIN", "PLAIN"])
def smtp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SmtpReceiver]:
    yield from smtp_receiver(tmp_path, request.param)


@pytest.fixture
def smtp_plain(tmp_path: Path) -> Iterator[SmtpReceiver]:
    yield from smtp_receiver(tmp_path, "PLAIN")


# -- configuration and sessions ---------------------------------------------------------------


def notify_config(
    tmp_path: Path,
    receiver: HttpReceiver | None = None,
    smtp: SmtpReceiver | None = None,
    *,
    webhook: list[str] | None = None,
    extra: str = "",
) -> Path:
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD + "\n")
    password_file.chmod(0o600)
    slack_file = tmp_path / "slack-url"
    lines = ["[notify]"]
    if receiver is not None:
        hooks = webhook if webhook is not None else [receiver.url(WEBHOOK_PATH)]
        lines.append(f"webhook = {json.dumps(hooks)}")
        slack_file.write_text(f"# the #ops channel\n{receiver.url(SLACK_PATH)}\n")
        slack_file.chmod(0o600)
        lines.append(f'slack_file = "{slack_file}"')
        lines.append(f'alertmanager = "{receiver.url("/am")}"')
    if smtp is not None:
        lines += [
            'email = ["ops@clinic.example", "oncall@clinic.example"]',
            f'smtp_url = "smtp://{SMTP_USER}@127.0.0.1:{smtp.port}"',
            f'smtp_password_file = "{password_file}"',
            'smtp_from = "medvault@clinic.example"',
            f'smtp_ca_file = "{smtp.ca_file}"',
        ]
    lines += ["timeout_s = 5", extra]
    path = tmp_path / "medvault.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def session_for(config: Path, kept: Kept | None = None) -> Session:
    return Session(
        credentials=Given("unused"),
        caller=Caller(user="dr.smith", shell="scheduler", host=HOST),
        config=str(config),
        observers=[kept] if kept is not None else [],
    )


def stale(state: str = FIRING) -> AlertEvent:
    return AlertEvent(
        key="backup_stale/emr",
        rule="backup_stale",
        severity="critical",
        state=state,
        summary="no successful backup of emr for 27 h",
        message="The newest backup of emr is 27 h old; the limit is 26 h.",
        started=STARTED,
        ended=STARTED + dt.timedelta(hours=2) if state == RESOLVED else None,
        source="emr",
        repository="/srv/vault",
        labels={"job": "full"},
    )


# -- webhook, Slack, Alertmanager -------------------------------------------------------------


def test_the_webhook_body_is_alertmanagers_with_medvaults_own_fields(
    receiver: HttpReceiver, tmp_path: Path
) -> None:
    session = session_for(notify_config(tmp_path, receiver))
    report = deliver(session, [stale(), stale(RESOLVED)])
    assert report.ok and session.notes == []

    firing, resolved = receiver.at(WEBHOOK_PATH)
    labels = {
        "alertname": "backup_stale",
        "severity": "critical",
        "source": "emr",
        "repository": "/srv/vault",
        "host": HOST,
        "job": "full",
    }
    annotations = {
        "summary": "no successful backup of emr for 27 h",
        "description": "The newest backup of emr is 27 h old; the limit is 26 h.",
    }
    assert firing == {
        "version": "4",
        "receiver": "medvault",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": "2024-05-01T02:00:00.000Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": firing["alerts"][0]["fingerprint"],
            }
        ],
        "groupLabels": {"alertname": "backup_stale"},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "groupKey": '{}:{alertname="backup_stale"}',
        "truncatedAlerts": 0,
        "key": "backup_stale/emr",
        "rule": "backup_stale",
        "severity": "critical",
        "state": "firing",
        "source": "emr",
        "repository": "/srv/vault",
        "summary": "no successful backup of emr for 27 h",
        "message": "The newest backup of emr is 27 h old; the limit is 26 h.",
        "started": "2024-05-01T02:00:00.000Z",
        "ended": None,
        "host": HOST,
        "test": False,
    }
    assert resolved["status"] == resolved["alerts"][0]["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"] == resolved["ended"] == "2024-05-01T04:00:00.000Z"
    # The same alert: Alertmanager's receivers pair a resolution with its firing by this.
    assert resolved["alerts"][0]["fingerprint"] == firing["alerts"][0]["fingerprint"]
    (headers,) = [r.headers for r in receiver.received if r.path == WEBHOOK_PATH][:1]
    assert headers["Content-Type"] == "application/json"


def test_alertmanager_gets_the_batch_in_one_post_with_rfc3339_times(
    receiver: HttpReceiver, tmp_path: Path
) -> None:
    import re

    session = session_for(notify_config(tmp_path, receiver))
    assert deliver(session, [stale(), stale(RESOLVED)]).ok
    (alerts,) = receiver.at("/am/api/v2/alerts")
    firing, resolved = alerts
    assert set(firing) == {"labels", "annotations", "startsAt"}  # Alertmanager ends it
    assert set(resolved) == {"labels", "annotations", "startsAt", "endsAt"}
    assert firing["labels"]["alertname"] == "backup_stale"
    assert firing["labels"]["severity"] == "critical" and firing["labels"]["source"] == "emr"
    assert firing["annotations"]["summary"] == "no successful backup of emr for 27 h"
    for moment in (firing["startsAt"], resolved["startsAt"], resolved["endsAt"]):
        assert re.match(RFC3339, moment)
    ended = dt.datetime.fromisoformat(resolved["endsAt"])
    assert ended == STARTED + dt.timedelta(hours=2)


def test_slack_is_retried_after_429_as_retry_after_says(
    receiver: HttpReceiver, tmp_path: Path
) -> None:
    receiver.answers[SLACK_PATH] = [(429, "1")]
    session = session_for(notify_config(tmp_path, receiver))
    report = deliver(session, [stale()])
    (slack,) = [d for d in report.deliveries if d.channel == "slack"]
    assert (slack.ok, slack.sent, slack.error) == (True, 1, None)
    first, second = receiver.at(SLACK_PATH)  # refused once, then taken
    assert first == second
    assert second["text"] == (
        "[medvault] CRITICAL backup_stale emr: no successful backup of emr for 27 h"
    )
    (attachment,) = second["attachments"]
    assert attachment["text"] == "The newest backup of emr is 27 h old; the limit is 26 h."
    assert {"title": "Source", "value": "emr", "short": True} in attachment["fields"]
    assert slack.target == f"http://127.0.0.1:{receiver.port}/…"


def test_slack_gives_up_when_it_keeps_answering_429(receiver: HttpReceiver, tmp_path: Path) -> None:
    receiver.answers[SLACK_PATH] = [(429, "3600")]
    session = session_for(notify_config(tmp_path, receiver))
    report = deliver(session, [stale()])
    (slack,) = [d for d in report.deliveries if d.channel == "slack"]
    assert not slack.ok and "429" in (slack.error or "")
    assert len(receiver.at(SLACK_PATH)) == 1  # an hour is not waited for
    assert [d.ok for d in report.deliveries if d.channel != "slack"] == [True, True]


def test_an_unreachable_receiver_costs_one_line_naming_its_host_and_the_others_deliver(
    receiver: HttpReceiver, tmp_path: Path
) -> None:
    closed = free_port()
    dead = f"http://127.0.0.1:{closed}{WEBHOOK_PATH}"
    receiver.answers["/am/api/v2/alerts"] = [(500, None)]
    config = notify_config(tmp_path, receiver, webhook=[dead, receiver.url(WEBHOOK_PATH)])
    session = session_for(config)
    report = deliver(session, [stale()])

    by_channel = {(d.channel, d.ok) for d in report.deliveries}
    assert by_channel == {
        ("webhook", False),
        ("webhook", True),
        ("slack", True),
        ("alertmanager", False),
    }
    assert len(receiver.at(WEBHOOK_PATH)) == len(receiver.at(SLACK_PATH)) == 1
    unreachable, refused = session.notes
    assert unreachable == (
        f"notification not delivered: webhook http://127.0.0.1:{closed}/…: Connection refused"
    )
    assert refused.startswith(
        f"notification not delivered: alertmanager http://127.0.0.1:{receiver.port}/…: HTTP 500"
    )
    for note in session.notes:
        assert "\n" not in note and "SECRET" not in note and "/hooks" not in note


def test_a_slack_file_that_cannot_be_read_fails_that_channel_alone(
    receiver: HttpReceiver, tmp_path: Path
) -> None:
    config = notify_config(tmp_path, receiver)
    (tmp_path / "slack-url").unlink()
    session = session_for(config)
    report = deliver(session, [stale()])
    (slack,) = [d for d in report.deliveries if d.channel == "slack"]
    assert slack.target == f"slack_file {tmp_path / 'slack-url'}"
    assert slack.error == "cannot read it: No such file or directory"
    assert [d.ok for d in report.deliveries if d.channel != "slack"] == [True, True]


def test_nothing_configured_delivers_nothing_and_says_nothing(tmp_path: Path) -> None:
    config = tmp_path / "medvault.toml"
    config.write_text("[catalog]\n")
    session = session_for(config)
    report = deliver(session, [stale()])
    assert report.ok and report.deliveries == () and session.notes == []


# -- email ------------------------------------------------------------------------------------


def test_email_goes_over_starttls_with_a_login_from_the_password_file(
    smtp: SmtpReceiver, tmp_path: Path
) -> None:
    session = session_for(notify_config(tmp_path, smtp=smtp))
    report = deliver(session, [stale(), stale(RESOLVED)])
    (email,) = report.deliveries
    assert (email.ok, email.sent) == (True, 2), email.error
    assert email.target == (f"ops@clinic.example, oncall@clinic.example via 127.0.0.1:{smtp.port}")
    firing, resolved = smtp.mails
    assert firing.tls and firing.login == SMTP_USER
    assert firing.sender == "medvault@clinic.example"
    assert firing.recipients == ["ops@clinic.example", "oncall@clinic.example"]
    assert firing.message["Subject"] == "[medvault] CRITICAL backup_stale emr"
    assert resolved.message["Subject"] == "[medvault] RESOLVED backup_stale emr"
    assert firing.message["To"] == "ops@clinic.example, oncall@clinic.example"
    assert firing.message["Auto-Submitted"] == "auto-generated"
    assert firing.message.get_content_type() == "text/plain"
    text = firing.message.get_payload(decode=True).decode()
    assert "no successful backup of emr for 27 h" in text
    assert "Since:      2024-05-01T02:00:00.000Z" in text
    assert (
        "Resolved:   2024-05-01T04:00:00.000Z" in resolved.message.get_payload(decode=True).decode()
    )
    assert smtp.logins == [(smtp.mechanism, SMTP_USER)]  # one connection for the batch


def test_email_to_a_server_whose_certificate_is_not_trusted_is_not_sent(
    smtp_plain: SmtpReceiver, receiver: HttpReceiver, tmp_path: Path
) -> None:
    config = notify_config(tmp_path, receiver, smtp_plain)
    config.write_text(config.read_text().replace(f'smtp_ca_file = "{smtp_plain.ca_file}"', ""))
    session = session_for(config)
    report = deliver(session, [stale()])
    (email,) = [d for d in report.deliveries if d.channel == "email"]
    assert not email.ok and (email.error or "").startswith("TLS certificate not trusted")
    assert smtp_plain.mails == [] and smtp_plain.logins == []
    assert all(d.ok for d in report.deliveries if d.channel != "email")


def test_a_wrong_smtp_password_is_a_failed_delivery_without_the_password(
    smtp_plain: SmtpReceiver, tmp_path: Path
) -> None:
    config = notify_config(tmp_path, smtp=smtp_plain)
    (tmp_path / "smtp-password").write_text("not-the-password\n")
    session = session_for(config)
    (email,) = deliver(session, [stale()]).deliveries
    assert not email.ok and (email.error or "").startswith("SMTP 535")
    assert "not-the-password" not in " ".join(session.notes)
    assert smtp_plain.mails == []


def test_a_password_file_open_to_others_is_used_with_a_note(
    smtp_plain: SmtpReceiver, tmp_path: Path
) -> None:
    config = notify_config(tmp_path, smtp=smtp_plain)
    (tmp_path / "smtp-password").chmod(0o644)
    session = session_for(config)
    assert deliver(session, [stale()]).ok
    assert session.notes == [
        f"smtp_password_file {tmp_path / 'smtp-password'} is open to group or others (mode "
        f"0644); make it private: chmod 600 {tmp_path / 'smtp-password'}"
    ]


def test_email_over_implicit_tls(tmp_path: Path) -> None:
    import ssl

    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    state = SmtpReceiver(port=free_port(), ca_file=cert, mechanism="PLAIN")
    controller = Controller(
        Handler(state),
        hostname="127.0.0.1",
        port=state.port,
        ssl_context=context,
        server_hostname="localhost",
    )
    controller.start()
    try:
        config = tmp_path / "medvault.toml"
        config.write_text(
            "[notify]\n"
            'email = ["ops@clinic.example"]\n'
            f'smtp_url = "smtps://127.0.0.1:{state.port}"\n'
            'smtp_from = "medvault@clinic.example"\n'
            f'smtp_ca_file = "{cert}"\n'
        )
        (email,) = deliver(session_for(config), [stale()]).deliveries
    finally:
        controller.stop()
    assert email.ok, email.error
    (mail,) = state.mails
    assert mail.tls and mail.login is None


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            'smtp_url = "smtp://alerts:hunter2@mail.example:587"\n',
            "notify: smtp_url: holds a password; remove it and keep the password in "
            "smtp_password_file",
        ),
        (
            'smtp_url = "smtp://mail.example"\nsmtp_starttls = false\n',
            "notify: smtp_starttls: may be false only for a server on the loopback address",
        ),
        (
            'webhook = ["https://ok.example/a", "https://u:hunter2@hook.example/x"]\n',
            "notify.webhook: entry 2: credentials in the URL are refused; use a token in its path",
        ),
        ('slack = ["ftp://hunter2.example/x"]\n', "notify.slack: entry 1: needs an http://"),
        ('email = ["ops@clinic.example"]\n', "notify: email: needs smtp_url and smtp_from"),
        (
            'smtp_url = "smtp://alerts@mail.example"\n',
            "notify: smtp_password_file: goes with a user in smtp_url",
        ),
    ],
)
def test_notify_settings_refuse_secrets_and_plain_text_mail_never_echoing_them(
    tmp_path: Path, section: str, message: str
) -> None:
    from medvault.config import load_settings

    config = tmp_path / "medvault.toml"
    config.write_text("[notify]\n" + section)
    with pytest.raises(ConfigError) as raised:
        load_settings(str(config))
    assert str(raised.value).startswith(f"{config}: {message}")
    assert "hunter2" not in str(raised.value)


def test_plain_smtp_is_allowed_to_a_relay_on_the_loopback_address(tmp_path: Path) -> None:
    from medvault.config import load_settings

    config = tmp_path / "medvault.toml"
    config.write_text('[notify]\nsmtp_url = "smtp://127.0.0.1:25"\nsmtp_starttls = false\n')
    assert load_settings(str(config)).notify.smtp_starttls is False


# -- alerts test ------------------------------------------------------------------------------


def test_alerts_test_is_a_run_and_a_marked_alert_in_every_channel(
    receiver: HttpReceiver, smtp_plain: SmtpReceiver, tmp_path: Path
) -> None:
    kept = Kept()
    session = session_for(notify_config(tmp_path, receiver, smtp_plain), kept)
    report = alerts_test(session)
    assert report.ok and [d.channel for d in report.deliveries] == [
        "webhook",
        "slack",
        "email",
        "alertmanager",
    ]
    (record,) = kept.records
    assert (record.operation, record.status, record.shell) == ("alert-test", "ok", "scheduler")
    assert [d["ok"] for d in record.details["deliveries"]] == [True] * 4

    (webhook,) = receiver.at(WEBHOOK_PATH)
    assert webhook["test"] is True and webhook["commonLabels"]["test"] == "true"
    assert webhook["summary"] == f"medvault alert test from {HOST}"
    assert webhook["commonAnnotations"]["summary"] == f"TEST: medvault alert test from {HOST}"
    (slack,) = receiver.at(SLACK_PATH)
    assert slack["text"].startswith("[medvault] TEST CRITICAL alert_test: TEST: ")
    ((am,),) = receiver.at("/am/api/v2/alerts")
    assert am["labels"]["test"] == "true" and am["labels"]["alertname"] == "alert_test"
    (mail,) = smtp_plain.mails
    assert mail.message["Subject"] == "[medvault] TEST CRITICAL alert_test"
    assert "nothing is wrong" in mail.message.get_payload(decode=True).decode()


def test_alerts_test_with_a_failing_channel_is_a_failed_run(
    receiver: HttpReceiver, tmp_path: Path
) -> None:
    receiver.answers[WEBHOOK_PATH] = [(503, None)]
    kept = Kept()
    session = session_for(notify_config(tmp_path, receiver), kept)
    report = alerts_test(session)
    assert not report.ok and len(report.failed) == 1
    (record,) = kept.records
    assert record.status == "failed"
    assert record.error == (
        f"1 of 3 notification target(s) failed; webhook http://127.0.0.1:{receiver.port}/…: "
        "HTTP 503 Service Unavailable: ok"
    )


# -- the CLI ----------------------------------------------------------------------------------


def test_the_cli_sends_the_test_records_the_run_and_prints_no_secret(
    initialized_cli: Cli, receiver: HttpReceiver, smtp_plain: SmtpReceiver, tmp_path: Path
) -> None:
    config = notify_config(tmp_path, receiver, smtp_plain)
    env = {"MEDVAULT_CONFIG": str(config)}
    done = initialized_cli("alerts", "test", env=env)
    port = receiver.port
    assert done.stdout.splitlines() == [
        f"webhook      http://127.0.0.1:{port}/…  ok (1 sent)",
        f"slack        http://127.0.0.1:{port}/…  ok (1 sent)",
        f"email        ops@clinic.example, oncall@clinic.example via 127.0.0.1:"
        f"{smtp_plain.port}  ok (1 sent)",
        f"alertmanager http://127.0.0.1:{port}/…  ok (1 sent)",
        "test alert delivered to 4 of 4 target(s)",
    ]

    receiver.answers[SLACK_PATH] = [(500, None)]
    broken = initialized_cli("alerts", "test", "--json", env=env, check=False)
    assert broken.returncode == NotificationFailed.exit_code == 26
    doc = json.loads(broken.stdout)
    assert doc["ok"] is False
    assert [(d["channel"], d["ok"]) for d in doc["deliveries"]] == [
        ("webhook", True),
        ("slack", False),
        ("email", True),
        ("alertmanager", True),
    ]
    assert broken.stderr.strip() == (
        "medvault: error: 1 of 4 notification target(s) did not deliver"
    )

    listed = initialized_cli("runs", "--json", env=env).stdout
    runs = json.loads(listed)
    assert [(r["operation"], r["status"]) for r in runs[:2]] == [
        ("alert-test", "failed"),
        ("alert-test", "ok"),
    ]
    # Sealed into the default repository's audit trail once a command opens it.
    initialized_cli("snapshots", env=env)
    exported = initialized_cli("audit", "export", "--since", "1h", env=env).stdout
    sealed = [json.loads(line) for line in exported.splitlines()]
    assert [e["status"] for e in sealed if e.get("operation") == "alert-test"] == [
        "ok",
        "failed",
    ]

    shown = done.stdout + done.stderr + broken.stdout + broken.stderr + exported + listed
    # What this host keeps (spool, outbox, catalog) holds none either.
    kept = b"".join(
        path.read_bytes()
        for path in (initialized_cli.cwd / "medvault-state").rglob("*")
        if path.is_file()
    )
    for secret in (SMTP_PASSWORD, SLACK_PATH, "xoxbSECRETtoken42", WEBHOOK_PATH):
        assert secret not in shown and secret.encode() not in kept


def test_the_cli_refuses_an_alert_test_with_no_channel(
    initialized_cli: Cli, tmp_path: Path
) -> None:
    config = tmp_path / "medvault.toml"
    config.write_text("[notify]\n")
    done = initialized_cli("alerts", "test", env={"MEDVAULT_CONFIG": str(config)}, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "medvault: error: no notification channel is configured: add webhook, slack, email "
        "or alertmanager to [notify] in medvault.toml"
    )


def test_the_cli_refuses_an_unknown_severity(initialized_cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "medvault.toml"
    config.write_text('[notify]\nalertmanager = "http://127.0.0.1:9"\n')
    env = {"MEDVAULT_CONFIG": str(config)}
    done = initialized_cli("alerts", "test", "--severity", "loud", env=env, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "medvault: error: --severity 'loud': one of warning, critical, emergency"
    )
    runs = json.loads(initialized_cli("runs", "--json", env=env).stdout)
    assert (runs[0]["operation"], runs[0]["status"]) == ("alert-test", "refused")
