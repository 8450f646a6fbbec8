"""The Redis part of `make demo`: a platform's session store backed up over the replication
protocol (no RDB file on the backup host), wiped by an accident, put back with its TTLs, and
drilled in a scratch server. Runs the real `medvault` command against a real redis-server."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

MEDVAULT = str(Path(sys.executable).parent / "medvault")


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def medvault(*args: str, env: dict[str, str]) -> str:
    print(f"$ medvault {' '.join(args)}", flush=True)
    done = subprocess.run([MEDVAULT, *args], env=env, capture_output=True, text=True)
    if done.stdout:
        print(done.stdout.rstrip())
    if done.returncode != 0:
        print(done.stderr.rstrip(), file=sys.stderr)
        raise SystemExit(f"demo failed: medvault {args[0]} exited {done.returncode}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="medvault-redis-demo-"))
    port = free_port()
    password = secrets.token_urlsafe(18)
    (work / "redis.pass").write_text(password)
    (work / "redis.pass").chmod(0o600)
    server = subprocess.Popen(
        ["redis-server", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert server.stdin is not None
    # The configuration (and its password) on stdin, never on the command line.
    server.stdin.write(
        f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {work}\n'
        f"requirepass {password}\nrepl-diskless-sync-delay 0\n"
    )
    server.stdin.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")} | {
        "MEDVAULT_PASSWORD": secrets.token_urlsafe(24),
        "MEDVAULT_STATE_DIR": str(work / "state"),
    }
    config = work / "medvault.toml"
    config.write_text(
        f'[repository.main]\nurl = "{work / "vault"}"\n\n'
        f'[source.sessions]\nkind = "redis"\nurl = "redis://127.0.0.1:{port}/0"\n'
        f'password_file = "{work / "redis.pass"}"\n'
    )
    try:
        client = redis.Redis(port=port, password=password)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        say("A platform's session store: 2,000 logged-in sessions expiring in an hour")
        pipe = client.pipeline()
        for n in range(2000):
            pipe.hset(f"session:{n:05}", mapping={"user": f"clinician-{n % 90}", "ward": "B4"})
            pipe.expire(f"session:{n:05}", 3600)
        pipe.execute()
        print(
            f"redis: DBSIZE {client.dbsize()}, TTL of session:00042 {client.ttl('session:00042')} s"
        )
        medvault("--repo", str(work / "vault"), "init", env=env)

        say("Backup over the replication protocol: the RDB streams straight into the repository")
        medvault("--config", str(config), "backup", "sessions", env=env)

        say("An accident: FLUSHALL on the production session store")
        client.flushall()
        print(f"redis: DBSIZE {client.dbsize()}")

        say("Restore into the running server, TTLs kept")
        medvault(
            "--config",
            str(config),
            "restore",
            "latest:sessions",
            "--redis-url",
            f"redis://127.0.0.1:{port}/0",
            "--redis-password-file",
            str(work / "redis.pass"),
            env=env,
        )
        print(
            f"redis: DBSIZE {client.dbsize()}, TTL of session:00042 {client.ttl('session:00042')} s"
        )
        if client.dbsize() != 2000:
            raise SystemExit("demo failed: the sessions did not come back")

        say("A drill: the snapshot loaded into a scratch redis-server, key counts compared")
        medvault("--config", str(config), "drill", "sessions", env=env)
        say("Redis demo finished")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
