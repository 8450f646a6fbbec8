"""Lock identity and liveness: a lock is known by its random name, judged live by the store's
clock or (only inside this PID namespace) by its process, and a malformed one breaks nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Cli
from medvault.backends import open_backend
from medvault.errors import RepositoryLocked
from medvault.repository.locks import RepositoryLock, read_locks

# Takes a lock through the Python API and holds it until its stdin closes.
HOLDER = """
import sys
from medvault.backends import open_backend
from medvault.repository.locks import RepositoryLock

lock = RepositoryLock(open_backend(sys.argv[1]), exclusive=False, purpose="lock test",
                      lease=float(sys.argv[2]))
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
try:
    lock.ensure_held()
    print("still held", flush=True)
except Exception as exc:
    print(f"lost: {exc}", flush=True)
lock.release()
"""


def hold_lock(
    repo: Path, processes: list[subprocess.Popen[str]], *, lease: float = 1800, prefix=()
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-c", HOLDER, str(repo), str(lease)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(proc)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "locked":
        raise AssertionError(f"lock holder failed: {proc.communicate()[1]}")
    return proc


def lock_names(repo: Path) -> list[str]:
    return sorted(n for n in os.listdir(repo / "locks") if not n.startswith("."))


def exclusive(repo: Path) -> RepositoryLock:
    return RepositoryLock(open_backend(str(repo)), exclusive=True, purpose="test")


def test_a_holder_in_another_pid_namespace_is_never_judged_by_its_pid(
    initialized_cli: Cli, processes: list[subprocess.Popen[str]]
) -> None:
    """Containers on one host share the hostname and each runs its program as pid 1: the
    holder's pid means nothing here, so its lock stays live while it runs."""
    cli = initialized_cli
    holder = hold_lock(cli.repo, processes, prefix=("unshare", "--pid", "--fork", "--mount-proc"))
    (lock,) = read_locks(open_backend(str(cli.repo))).locks
    assert lock.host == socket.gethostname() and lock.pid == 1
    held = lock_names(cli.repo)

    done = cli("unlock")
    assert "no stale locks" in done.stdout and "still held" in done.stderr
    assert lock_names(cli.repo) == held
    with pytest.raises(RepositoryLocked) as refused:
        exclusive(cli.repo).acquire()
    assert "stale" not in str(refused.value)
    holder.communicate(input="")
    assert holder.returncode == 0 and not lock_names(cli.repo)


def test_a_lock_not_refreshed_for_its_lease_by_the_stores_clock_is_stale(
    initialized_cli: Cli, processes: list[subprocess.Popen[str]]
) -> None:
    cli = initialized_cli
    holder = hold_lock(cli.repo, processes, lease=3.0)
    os.kill(holder.pid, signal.SIGSTOP)  # hung: alive, but refreshes nothing
    with pytest.raises(RepositoryLocked):
        exclusive(cli.repo).acquire()
    time.sleep(3.0 + 0.5 + 1.0)  # the lease, its margin (a sixth), and slack

    lock = exclusive(cli.repo)
    lock.acquire()
    lock.release()
    done = cli("unlock")
    assert "removed shared lock by pid" in done.stdout and "not refreshed for" in done.stdout
    # Woken up, the holder knows by its own clock that its lease ran out: it commits nothing.
    os.kill(holder.pid, signal.SIGCONT)
    out, _ = holder.communicate(input="")
    assert "lost: lost the repository lock" in out


VALID = {
    "v": 2, "exclusive": False, "scope": "", "host": "h", "namespace": "", "pid": 1,
    "process_start": "", "user": "u", "purpose": "p", "created": 1.0, "refreshed": 1.0,
    "lease": 60.0,
}  # fmt: skip


def test_a_lock_removed_by_unlock_is_never_brought_back_by_its_holder(
    initialized_cli: Cli, processes: list[subprocess.Popen[str]]
) -> None:
    """Its holder would otherwise go on as if nothing happened, while an exclusive operation
    or a prune may have run in between."""
    cli = initialized_cli
    holder = hold_lock(cli.repo, processes, lease=3.0)
    cli("unlock", "--remove-all")
    time.sleep(1.5)  # three refresh periods of the holder
    assert lock_names(cli.repo) == []
    out, _ = holder.communicate(input="")
    assert "lost: lost the repository lock (it was removed while this operation ran)" in out


def write_raw_lock(repo: Path, name: str, doc: object) -> None:
    with open_backend(str(repo)) as backend:
        backend.store(f"locks/{name}", json.dumps(doc).encode(), overwrite=True)


def test_a_lock_from_a_host_whose_clock_runs_a_year_ahead_still_expires(
    initialized_cli: Cli,
) -> None:
    cli = initialized_cli
    a_year = 365 * 24 * 3600.0
    ahead = time.time() + a_year
    doc = VALID | {"exclusive": True, "host": "clinic-db9", "namespace": "elsewhere", "pid": 77}
    doc |= {"purpose": "forget", "created": ahead, "refreshed": ahead, "lease": 1800.0}
    write_raw_lock(cli.repo, "ab" * 16, doc)
    refused = cli("backup", str(cli.cwd), check=False)
    assert refused.returncode == 12
    assert (
        "the clock of clinic-db9 is" in refused.stderr and "ahead of the store's" in refused.stderr
    )
    # By the store's clock it was last written 40 minutes ago: past its lease and margin.
    forty_minutes_ago = time.time() - 40 * 60
    os.utime(cli.repo / "locks" / ("ab" * 16), (forty_minutes_ago, forty_minutes_ago))
    cli("backup", str(cli.cwd))
    done = cli("unlock")
    assert "removed exclusive lock by pid 77 on clinic-db9" in done.stdout
    assert "not refreshed for 40 min" in done.stdout


MALFORMED: dict[str, object] = {
    "not json": b"{not json",
    "wrong types": {
        "exclusive": "no", "host": 1, "pid": "x", "process_start": 5, "user": None,
        "purpose": [], "created": "yesterday", "refreshed": "today",
    },
    "a list": [1, 2, 3],
    "unknown scope": VALID | {"scope": "everything"},
    "endless lease": VALID | {"lease": 1e300, "refreshed": 1e300},
    "a pid of true": VALID | {"pid": True},
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_lock_is_reported_blocks_nothing_and_unlock_removes_it(
    initialized_cli: Cli, make_tree, kind: str
) -> None:
    cli = initialized_cli
    body = MALFORMED[kind]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with open_backend(str(cli.repo)) as backend:
        backend.store("locks/" + "cd" * 16, raw)
    data = make_tree({"letter.txt": b"Dear colleague\n"})
    done = cli("backup", str(data))
    assert "is not a valid lock" in done.stderr and "medvault unlock" in done.stderr
    assert "Traceback" not in done.stderr
    unlocked = cli("unlock")
    assert f"removed locks/{'cd' * 16} is not a valid lock" in unlocked.stdout
    assert lock_names(cli.repo) == []
