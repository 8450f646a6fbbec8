"""`medvault serve` as a real process: schedules make real snapshots, /metrics shows the
numbers the catalog holds, a failing source's alert reaches a webhook and an SMTP server and
resolves when the source is fixed, and SIGTERM in the middle of a backup leaves a consistent,
unlocked repository."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.receivers import SMTP_PASSWORD, SMTP_USER, HttpReceiver, SmtpReceiver, free_port

from conftest import MEDVAULT, PASSWORD, Cli

WAIT_S = 90.0


def eventually(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll `probe` until it returns something true; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class Served:
    """A `medvault serve` process on a free loopback port; its log in a file (a pipe nobody
    reads would fill and stall it)."""

    def __init__(self, cli: Cli, config: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = cli.cwd / "serve.log"
        self.proc = subprocess.Popen(
            [MEDVAULT, "--config", str(config), "serve", "--listen", f"127.0.0.1:{self.port}"],
            cwd=cli.cwd,
            env=cli.env | (env or {}),
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            start_new_session=True,
        )
        eventually("serve to answer /healthz", lambda: self.get("/healthz")[0] == 200)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"serve exited {self.proc.returncode}: {self.text()}"
                ) from None
            return 0, b""

    def metric(self, name: str, **labels: str) -> float | None:
        _, body = self.get("/metrics")
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        """SIGTERM; serve ends its jobs, then dies of the signal it caught, as process
        managers expect of a clean stop."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=120) == -signal.SIGTERM, self.text()
        assert "medvault.serve: stopped" in self.text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def serving() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        served.kill()


def write_config(cli: Cli, body: str) -> Path:
    config = cli.cwd / "medvault.toml"
    config.write_text(f'[repository.main]\nurl = "{cli.url}"\n\n{body}')
    return config


def snapshots_of(cli: Cli, source: str) -> list[dict[str, Any]]:
    found = json.loads(cli("snapshots", "--json").stdout)
    return [s for s in found if s["source"] == source]


def runs_of(cli: Cli, config: Path, operation: str, status: str) -> int:
    done = cli(
        "--config", str(config), "runs", "--json", "--operation", operation, "--limit", "1000"
    )
    return sum(1 for run in json.loads(done.stdout) if run["status"] == status)


def test_a_schedule_makes_snapshots_and_metrics_show_the_catalogs_numbers(
    initialized_cli: Cli, make_tree: Callable[[dict[str, bytes | str]], Path], serving: list[Served]
) -> None:
    cli = initialized_cli
    tree = make_tree({"letters/a.txt": "referral", "scans/b.bin": os.urandom(300_000)})
    config = write_config(
        cli,
        f'[source.docs]\nkind = "files"\npaths = ["{tree}"]\n\n'
        '[source.docs.schedule]\nincremental = "every 2s"\n\n'
        '[alerts]\nevaluate_every = "2s"\n',
    )
    served = Served(cli, config)
    serving.append(served)

    eventually("two scheduled snapshots", lambda: len(snapshots_of(cli, "docs")) >= 2)

    def agreeing() -> float | None:
        before = runs_of(cli, config, "backup", "ok")
        shown = served.metric("medvault_runs_total", operation="backup", status="ok")
        after = runs_of(cli, config, "backup", "ok")
        return shown if shown == before == after and before >= 2 else None

    assert eventually("/metrics to show the catalog's count of backups", agreeing) >= 2
    newest = max(s["time"] for s in snapshots_of(cli, "docs"))
    seen = served.metric(
        "medvault_last_success_timestamp_seconds", source="docs", operation="backup"
    )
    assert seen is not None and seen >= time.time() - WAIT_S
    assert served.metric("medvault_repository_up", repository="main") == 1.0
    assert newest  # the snapshots are real: each one lists and checks
    cli("check")
    runs = json.loads(
        cli("--config", str(config), "runs", "--json", "--operation", "backup").stdout
    )
    assert {run["shell"] for run in runs} == {"scheduler"}

    served.stop()
    assert "stopped" in served.text()
    assert cli.objects("locks") == []


def test_a_failing_source_alerts_by_webhook_and_mail_and_resolves_when_fixed(
    initialized_cli: Cli,
    receiver: HttpReceiver,
    smtp_plain: SmtpReceiver,
    serving: list[Served],
    tmp_path: Path,
) -> None:
    cli = initialized_cli
    scans = tmp_path / "scans"  # not there yet: every backup fails
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD)
    password_file.chmod(0o600)
    config = write_config(
        cli,
        f'[source.scans]\nkind = "files"\npaths = ["{scans}"]\n\n'
        '[source.scans.schedule]\nincremental = "every 2s"\n\n'
        '[alerts]\nevaluate_every = "1s"\n\n'
        f'[notify]\nwebhook = ["{receiver.url("/hook")}"]\n'
        'email = ["ops@clinic.example"]\n'
        f'smtp_url = "smtp://{SMTP_USER}@127.0.0.1:{smtp_plain.port}"\n'
        f'smtp_password_file = "{password_file}"\n'
        'smtp_from = "medvault@clinic.example"\n'
        f'smtp_ca_file = "{smtp_plain.ca_file}"\n'
        "timeout_s = 5\n",
    )
    served = Served(cli, config)
    serving.append(served)

    def hooked(rule: str, state: str) -> list[dict[str, Any]]:
        return [
            body
            for body in receiver.at("/hook")
            if body["rule"] == rule and body["state"] == state and body["source"] == "scans"
        ]

    (firing, *_) = eventually(
        "the failure alert at the webhook", lambda: hooked("job_failures", "firing")
    )
    assert firing["alerts"][0]["labels"]["alertname"] == "job_failures"
    assert firing["severity"] == "warning"
    eventually(
        "the failure alert by mail",
        lambda: [m for m in smtp_plain.mails if "job_failures" in str(m.message["Subject"])],
    )
    eventually("the never-backed-up alert", lambda: hooked("backup_stale", "firing"))
    listed = json.loads(cli("--config", str(config), "alerts", "--json").stdout)
    assert any(alert["rule"] == "job_failures" for alert in listed["firing"])

    scans.mkdir()
    (scans / "ct-0001.dcm").write_bytes(os.urandom(50_000))
    eventually("the failure alert resolved", lambda: hooked("job_failures", "resolved"))
    eventually("the stale alert resolved", lambda: hooked("backup_stale", "resolved"))
    eventually(
        "the resolution by mail",
        lambda: [m for m in smtp_plain.mails if "RESOLVED" in str(m.message["Subject"])],
    )
    served.stop()
    assert SMTP_PASSWORD not in served.text()


def test_sigterm_in_the_middle_of_a_backup_leaves_a_consistent_unlocked_repository(
    initialized_cli: Cli,
    make_tree: Callable[[dict[str, bytes | str]], Path],
    serving: list[Served],
    tmp_path: Path,
) -> None:
    cli = initialized_cli
    tree = make_tree({f"scan-{i}.bin": os.urandom(8_000_000) for i in range(6)})
    cli("backup", str(tree), "--source", "docs")  # an earlier snapshot that must stay whole
    gate = tmp_path / "gate"
    gate.mkdir()
    config = write_config(
        cli,
        f'[source.docs]\nkind = "files"\npaths = ["{tree}"]\n\n'
        '[source.docs.schedule]\nfull = "every 1s"\n\n'
        '[serve]\nstop_timeout = "60s"\n',
    )
    # The scheduled backup stops after its first pack until the test says go (never).
    served = Served(cli, config, env={"MEDVAULT_FAULTS": f"writer.after-pack=pause:{gate}"})
    serving.append(served)
    eventually("the backup to be mid-way", lambda: (gate / "writer.after-pack.reached").exists())
    assert cli.objects("locks"), "the running backup holds a lock"

    served.stop()
    log = served.text()
    assert "docs/full interrupted" in log, log
    assert cli.objects("locks") == []
    cli("check", "--read-data")
    (only,) = snapshots_of(cli, "docs")  # the interrupted one saved nothing
    restored = tmp_path / "restored"
    cli("restore", only["id"], "--target", str(restored))
    schedule = json.loads(cli("--config", str(config), "schedule", "--json").stdout)
    (job,) = [j for j in schedule["jobs"] if j["name"] == "docs/full"]
    assert job["last"]["status"] == "interrupted"


def test_serve_refuses_bad_input_in_one_line(initialized_cli: Cli, tmp_path: Path) -> None:
    cli = initialized_cli
    nothing = cli("serve", "--config", str(tmp_path / "absent.toml"), check=False)
    assert nothing.returncode == 2 and nothing.stderr.count("\n") == 1, nothing.stderr
    config = write_config(cli, "")
    bad = cli("--config", str(config), "serve", "--listen", "localhost", check=False)
    assert bad.returncode == 2 and "--listen: 'localhost' is not HOST:PORT" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = cli("--config", str(config), "serve", "--listen", f"127.0.0.1:{port}", check=False)
    assert busy.returncode == 2, busy.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert busy.stderr.count("\n") == 1 and "Traceback" not in busy.stderr


def test_an_alert_a_channel_did_not_take_is_sent_again_at_the_next_reading(
    initialized_cli: Cli, receiver: HttpReceiver, tmp_path: Path
) -> None:
    from tests.test_service_runs import Given

    from medvault.service.daemon import Daemon
    from medvault.service.runs import Caller
    from medvault.service.session import Session

    cli = initialized_cli
    config = write_config(
        cli,
        f'[source.scans]\nkind = "files"\npaths = ["{tmp_path / "scans"}"]\n\n'
        f'[notify]\nwebhook = ["{receiver.url("/hook")}"]\ntimeout_s = 5\n',
    )
    receiver.answers["/hook"] = [(503, None)]  # the on-call receiver is down once
    session = Session(
        credentials=Given(PASSWORD),
        caller=Caller(user="root", shell="serve", host="backup-1"),
        config=str(config),
        state_dir=tmp_path / "state",
        keep_keys=True,
    )
    daemon = Daemon(session)
    first = daemon.reading()
    assert first is not None and [e.rule for e in first.events] == ["backup_stale"]
    second = daemon.reading()
    assert second is not None and second.events == ()  # marked sent: nothing new to say
    bodies = [b for b in receiver.at("/hook") if b["rule"] == "backup_stale"]
    assert len(bodies) == 2  # refused with 503, then taken at the next reading
    third = daemon.reading()
    assert third is not None
    assert len([b for b in receiver.at("/hook") if b["rule"] == "backup_stale"]) == 2


def test_serve_asks_for_the_passphrase_once_not_at_every_reading(
    initialized_cli: Cli, serving: list[Served], tmp_path: Path
) -> None:
    """A reading a minute opens the repositories; the key derivation runs at the first only."""
    cli = initialized_cli
    asked = tmp_path / "asked"
    command = tmp_path / "passphrase"
    command.write_text(f"#!/bin/sh\necho once >> {asked}\nprintf '%s' '{PASSWORD}'\n")
    command.chmod(0o700)
    config = write_config(cli, '[alerts]\nevaluate_every = "1s"\n')
    served = Served(
        cli, config, env={"MEDVAULT_PASSWORD": "", "MEDVAULT_PASSWORD_COMMAND": str(command)}
    )
    serving.append(served)
    readings: set[str] = set()

    def several() -> bool:
        _, body = served.get("/healthz")
        health = json.loads(body or b"{}")
        if health.get("last_reading"):
            readings.add(health["last_reading"])
        return len(readings) >= 4

    eventually("four readings", several)
    assert served.metric("medvault_repository_up", repository="main") == 1.0
    assert asked.read_text().splitlines() == ["once"]
    served.stop()
