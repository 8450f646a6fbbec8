"""The operations part of `make demo`: `medvault serve` runs a clinic's schedule, a backup
that fails raises an alert that arrives at the on-call webhook, /metrics shows what
Prometheus would scrape, a silence is set with a reason, the weekly alert test goes out, and
SIGTERM stops the service cleanly. Runs the real `medvault` command."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MEDVAULT = str(Path(sys.executable).parent / "medvault")


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def medvault(*args: str, env: dict[str, str], allow: tuple[int, ...] = (0,)) -> str:
    print(f"$ medvault {' '.join(args)}", flush=True)
    done = subprocess.run([MEDVAULT, *args], env=env, capture_output=True, text=True)
    if done.stdout:
        print(done.stdout.rstrip())
    if done.returncode not in allow:
        print(done.stderr.rstrip(), file=sys.stderr)
        raise SystemExit(f"demo failed: medvault {args[0]} exited {done.returncode}")
    if done.returncode:
        print(f"(exit code {done.returncode})")
    return done.stdout


def on_call_webhook() -> tuple[str, list[dict[str, Any]]]:
    """The on-call team's webhook receiver, on the loopback address."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/on-call", received


def wait_for(what: str, probe: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        if time.monotonic() > deadline:
            raise SystemExit(f"demo failed: no {what} within {timeout:.0f} s")
        time.sleep(0.3)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="medvault-serve-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")} | {
        "MEDVAULT_PASSWORD": secrets.token_urlsafe(24),
        "MEDVAULT_STATE_DIR": str(work / "state"),
    }
    uploads, scans = work / "uploads", work / "pacs-export"
    uploads.mkdir()
    for n in range(20):
        (uploads / f"letter-{n:03}.txt").write_text(f"Discharge letter {n}: recovery uneventful\n")
    hook, received = on_call_webhook()
    port = free_port()
    config = work / "medvault.toml"
    config.write_text(
        f'[repository.main]\nurl = "{work / "vault"}"\n\n'
        '[tier.clinical]\nrpo = "1h"\nrto = "4h"\nfloor = "7y"\n\n'
        f'[source.uploads]\nkind = "files"\npaths = ["{uploads}"]\ntier = "clinical"\n\n'
        '[source.uploads.schedule]\nincremental = "every 4s"\ndrill = "every 15s"\n\n'
        "# The PACS export directory is not mounted: its backups fail.\n"
        f'[source.scans]\nkind = "files"\npaths = ["{scans}"]\ntier = "clinical"\n\n'
        '[source.scans.schedule]\nincremental = "every 4s"\n\n'
        '[schedule]\ncheck = "every 20s"\n\n'
        '[alerts]\nevaluate_every = "2s"\n\n'
        f'[notify]\nwebhook = ["{hook}"]\n\n'
        f'[serve]\nlisten = "127.0.0.1:{port}"\nstop_timeout = "30s"\n'
    )
    serve = None
    try:
        say("A clinic's medvault.toml: schedules per source, alerts to the on-call webhook")
        print(config.read_text())
        medvault("--repo", str(work / "vault"), "init", env=env)
        medvault("--config", str(config), "schedule", env=env)

        say("medvault serve: the schedule fires, alerts are evaluated, /metrics answers")
        log = (work / "serve.log").open("w")
        serve = subprocess.Popen([MEDVAULT, "--config", str(config), "serve"], env=env, stderr=log)
        print(f"$ medvault --config {config} serve &   (pid {serve.pid}, log {log.name})")

        def snapshots() -> list[dict[str, Any]]:
            listed = subprocess.run(
                [MEDVAULT, "--config", str(config), "snapshots", "--json"],
                env=env,
                capture_output=True,
                text=True,
            )
            return json.loads(listed.stdout) if listed.returncode == 0 else []

        wait_for("scheduled snapshot", lambda: len(snapshots()) >= 2)
        medvault("--config", str(config), "snapshots", env=env)

        say("The PACS export is missing: its scheduled backups fail, the on-call team hears")

        def failure_alert() -> list[dict[str, Any]]:
            return [b for b in received if b["rule"] == "job_failures" and b["state"] == "firing"]

        alert = wait_for("alert at the webhook", failure_alert)[0]
        print(f"webhook received: [{alert['severity']}] {alert['summary']}")
        print(f"  {alert['message']}")
        medvault("--config", str(config), "alerts", env=env)

        say("The scheduled restore drill proves the backups restore, within the tier's RTO")

        def drilled() -> bool:
            listed = subprocess.run(
                [MEDVAULT, "--config", str(config), "schedule", "--json"],
                env=env,
                capture_output=True,
                text=True,
            )
            jobs = json.loads(listed.stdout)["jobs"] if listed.returncode == 0 else []
            return any(j["name"] == "uploads/drill" and j.get("last") for j in jobs)

        wait_for("scheduled drill", drilled)
        medvault("--config", str(config), "drills", env=env)

        say(f"What Prometheus scrapes from http://127.0.0.1:{port}/metrics (a few lines)")

        def scraped() -> str:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as reply:
                text = reply.read().decode()
            # The watch loop reads again as soon as a job ends: the drill shows within seconds.
            return text if "medvault_drill_rto_seconds{" in text else ""

        text = wait_for("drill in /metrics", scraped)
        wanted = (
            'medvault_runs_total{operation="backup"',
            "medvault_last_success_timestamp_seconds",
            "medvault_job_consecutive_failures",
            "medvault_repository_up",
            "medvault_drill_rto_seconds",
        )
        for line in text.splitlines():
            if line.startswith(wanted):
                print(line)

        say("The PACS team is on it: silence the failure alert for 2 hours, with a reason")
        medvault(
            "--config",
            str(config),
            "alerts",
            "silence",
            "job_failures",
            "--source",
            "scans",
            "--for",
            "2h",
            "--reason",
            "PACS export unmounted for maintenance, ticket 4711",
            env=env,
        )
        say("The weekly alert test a procedure asks for")
        medvault("--config", str(config), "alerts", "test", env=env)
        print(f"webhook received: {received[-1]['summary']}")

        say("status for cron and Nagios: exit 0 OK, 1 WARN, 2 CRITICAL")
        medvault("--config", str(config), "status", env=env, allow=(0, 1, 2))

        say("SIGTERM: serve stops scheduling, lets a running job end, leaves no lock")
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=120)
        serve = None
        print("\n".join((work / "serve.log").read_text().splitlines()[-4:]))
        medvault("--config", str(config), "schedule", env=env)
        medvault("--config", str(config), "runs", "--limit", "8", env=env)
        say("Operations demo complete: schedules, alerts, metrics, a silence on record")
    finally:
        if serve is not None:
            serve.kill()
            serve.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
