"""A run killed before it could seal its record (SIGKILL) shows as failed once a later
command finds the stale lock that names its run id: the next backup or `unlock`."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import PASSWORD, Cli
from medvault.backends import open_backend
from medvault.repository.audit import AuditLog
from medvault.repository.keys import Credential
from medvault.repository.locks import parse_lock
from medvault.repository.repo import Repository


def records(cli: Cli) -> list[dict]:
    repo = Repository.open(open_backend(cli.location), Credential(passphrase=PASSWORD.encode()))
    return [e.record for e in AuditLog(repo).entries()]


@pytest.fixture
def data(make_tree) -> Path:
    return make_tree({"scan.dcm": os.urandom(300_000), "note.txt": b"Seen today.\n" * 40})


@pytest.mark.parametrize("finder", ["unlock", "backup"])
def test_a_killed_backup_is_recorded_as_failed_by_the_next_command(
    cli: Cli, data: Path, finder: str
) -> None:
    cli("init")
    killed = cli(
        "backup", str(data), env={"MEDVAULT_FAULTS": "snapshot.before-store=kill"}, check=False
    )
    assert killed.returncode == -signal.SIGKILL
    (lock_name,) = cli.objects("locks")
    with cli.backend() as backend:
        lock = parse_lock(lock_name, backend.load(lock_name), None)
    assert lock.run_id  # the lock names the run that held it
    assert [r["operation"] for r in records(cli)] == ["init"]  # no record of its own

    if finder == "unlock":
        cli("unlock")
    else:
        (data / "note.txt").write_text("again")
        cli("backup", str(data), "--json")
    found = [r for r in records(cli) if r["run_id"] == lock.run_id]
    assert len(found) == 1
    record = found[0]
    assert (record["operation"], record["status"], record["source"]) == (
        "backup",
        "failed",
        lock.purpose.partition(" of ")[2],
    )
    assert record["error"] == (
        "interrupted: the process ended without finishing "
        f"(found by {finder} on {os.uname().nodename})"
    )
    assert record["host"] == lock.host and record["snapshots"] == []

    # Found again (the backup leaves the stale lock for `unlock`): recorded once only.
    cli("unlock")
    cli("snapshots")
    assert [r["run_id"] for r in records(cli)].count(lock.run_id) == 1
    assert cli("audit", "verify").returncode == 0
    assert cli("check").returncode == 0


def test_locks_without_a_run_id_still_read(cli: Cli) -> None:
    """Locks written before the field existed (and this one's format without it)."""
    doc = {
        "v": 2,
        "exclusive": False,
        "scope": "",
        "host": "db1",
        "namespace": "",
        "pid": 4242,
        "process_start": "1",
        "user": "postgres",
        "purpose": "backup of files",
        "created": 1.0,
        "refreshed": 2.0,
        "lease": 1800.0,
    }
    lock = parse_lock("locks/" + "0" * 32, json.dumps(doc).encode(), None)
    assert lock.run_id == ""
    assert json.loads(lock.to_json()) == doc
    with pytest.raises(ValueError, match="run_id"):
        parse_lock("locks/" + "0" * 32, json.dumps({**doc, "run_id": 7}).encode(), None)
