"""Several processes at one repository: simultaneous backups, and the locks that keep
writers that only add (backup) apart from those that delete or rewrite (exclusive)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli, tree_digest
from medvault.backends import open_backend
from medvault.errors import RepositoryLocked
from medvault.repository.locks import RepositoryLock, read_locks

MiB = 1024 * 1024
POLL = 0.001
EXIT_LOCKED = 12

# A process that takes a lock through the Python API and holds it until its stdin closes.
HOLDER = """
import sys
from medvault.backends import open_backend
from medvault.repository.locks import RepositoryLock

lock = RepositoryLock(
    open_backend(sys.argv[1]), exclusive=sys.argv[2] == "exclusive", purpose="lock test"
)
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


# -- helpers -------------------------------------------------------------------------------


def restored(target: Path, source: Path) -> Path:
    """Snapshots mirror absolute paths: /x/data restores to target/x/data."""
    return target / str(source).lstrip("/")


def lock_objects(repo: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(repo / "locks") if not n.startswith("."))
    except FileNotFoundError:
        return []


def wait_for(
    proc: subprocess.Popen[str], condition: Callable[[], bool], timeout: float = 60.0
) -> None:
    """Poll every ~1 ms until `condition()` holds; fail if `proc` ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended first ({proc.returncode}): {out} {err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        time.sleep(POLL)


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for a `backup --json` run; it must have succeeded."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"backup exited {proc.returncode}: {err}"
    result: dict[str, Any] = json.loads(out)
    return result


def exclusive_lock(repo: Path) -> RepositoryLock:
    return RepositoryLock(open_backend(str(repo)), exclusive=True, purpose="test")


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


@pytest.fixture(scope="module")
def imaging(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough data that a backup holds its lock for a while."""
    root = tmp_path_factory.mktemp("imaging") / "imaging"
    return make_tree(root, {f"ct-{i}.dcm": os.urandom(6 * MiB) for i in range(3)})


def start_backup(
    cli: Cli, source: Path, name: str, processes: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    proc = cli.popen("backup", str(source), "--source", name, "--json")
    processes.append(proc)
    return proc


def backup_holding_its_lock(
    cli: Cli, source: Path, processes: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    """A backup frozen (SIGSTOP) while it holds its shared lock: alive, mid-run."""
    proc = start_backup(cli, source, "imaging", processes)
    wait_for(proc, lambda: bool(lock_objects(cli.repo)))
    os.kill(proc.pid, signal.SIGSTOP)
    return proc


def resume(proc: subprocess.Popen[str]) -> dict[str, Any]:
    os.kill(proc.pid, signal.SIGCONT)
    return finish(proc)


def lock_holder(
    repo: Path, processes: list[subprocess.Popen[str]], *, exclusive: bool = False
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(repo), "exclusive" if exclusive else "shared"],
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


# -- simultaneous backups ------------------------------------------------------------------


@dataclass(frozen=True)
class Ward:
    source: Path
    digest: dict[str, tuple[str, int, int, bytes]]
    result: dict[str, Any]


@dataclass(frozen=True)
class Simultaneous:
    cli: Cli
    wards: list[Ward]
    most_locks_at_once: int


@pytest.fixture(scope="module")
def simultaneous(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simultaneous]:
    """Two backups of overlapping trees into one repository, made to run at the same time:
    the first is held (SIGSTOP) once it has its lock until the second has its own."""
    root = tmp_path_factory.mktemp("simultaneous")
    cli = Cli(root / "repo", root)
    cli("init")
    shared = {"protocols/ct-head.pdf": os.urandom(5 * MiB), "atlas.bin": os.urandom(5 * MiB)}
    ward_a = make_tree(
        root / "ward-a",
        {**shared, "patients/a-0001.dcm": os.urandom(5 * MiB), "notes.txt": b"ward A\n" * 999},
    )
    ward_b = make_tree(
        root / "ward-b",
        {
            "copy/protocols/ct-head.pdf": shared["protocols/ct-head.pdf"],
            "atlas.bin": shared["atlas.bin"],
            "patients/b-0001.dcm": os.urandom(5 * MiB),
            "notes.txt": b"ward B\n" * 999,
        },
    )
    started: list[subprocess.Popen[str]] = []
    try:
        first = start_backup(cli, ward_a, "ward-a", started)
        wait_for(first, lambda: len(lock_objects(cli.repo)) == 1)
        os.kill(first.pid, signal.SIGSTOP)
        second = start_backup(cli, ward_b, "ward-b", started)
        wait_for(second, lambda: len(lock_objects(cli.repo)) == 2)
        most = len(lock_objects(cli.repo))
        os.kill(first.pid, signal.SIGCONT)
        results = [finish(first), finish(second)]
    finally:
        for proc in started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.communicate()
    yield Simultaneous(
        cli,
        [
            Ward(ward_a, tree_digest(ward_a), results[0]),
            Ward(ward_b, tree_digest(ward_b), results[1]),
        ],
        most,
    )


def test_two_simultaneous_backups_of_overlapping_trees_both_succeed(
    simultaneous: Simultaneous,
) -> None:
    assert simultaneous.most_locks_at_once == 2, "the two runs did not overlap"
    results = [w.result for w in simultaneous.wards]
    assert all(r["complete"] for r in results)
    assert results[0]["snapshot"] != results[1]["snapshot"]
    listing = json.loads(simultaneous.cli("snapshots", "--json").stdout)
    assert {s["id"] for s in listing} == {r["snapshot"] for r in results}
    assert not lock_objects(simultaneous.cli.repo), "both runs released their locks"


def test_both_simultaneous_snapshots_restore_identically(
    simultaneous: Simultaneous, tmp_path: Path
) -> None:
    for n, ward in enumerate(simultaneous.wards):
        target = tmp_path / f"out-{n}"
        simultaneous.cli("restore", str(ward.result["snapshot"]), "--target", str(target))
        assert tree_digest(restored(target, ward.source)) == ward.digest


def test_repository_written_by_simultaneous_backups_passes_check_read_data(
    simultaneous: Simultaneous,
) -> None:
    done = simultaneous.cli("check", "--read-data", "--json", check=False)
    report = json.loads(done.stdout)
    assert done.returncode == 0, report["errors"]
    assert report["ok"] and report["snapshots"] == 2
    assert report["packs_read"] == report["packs"]


def test_content_stored_by_simultaneous_backups_is_reused_by_the_next_backup(
    simultaneous: Simultaneous, tmp_path: Path
) -> None:
    # On a copy: this test adds a snapshot, the others read the shared repository.
    cli = Cli(tmp_path / "repo", tmp_path)
    shutil.copytree(simultaneous.cli.repo, cli.repo)
    sources = [str(w.source) for w in simultaneous.wards]
    result = json.loads(cli("backup", *sources, "--source", "both", "--json").stdout)
    assert result["complete"]
    assert int(result["bytes_read"]) > 20 * MiB
    assert int(result["bytes_added"]) < MiB


# -- locks ---------------------------------------------------------------------------------


def test_exclusive_lock_is_refused_while_a_backup_holds_its_shared_lock(
    initialized_cli: Cli, imaging: Path, processes: list[subprocess.Popen[str]]
) -> None:
    cli = initialized_cli
    backup = backup_holding_its_lock(cli, imaging, processes)
    with pytest.raises(RepositoryLocked) as refused:
        exclusive_lock(cli.repo).acquire()
    message = str(refused.value)
    assert f"shared lock by pid {backup.pid} on {socket.gethostname()}" in message
    assert "backup of imaging" in message
    assert "stale" not in message, "a running backup's lock is not stale"
    assert len(lock_objects(cli.repo)) == 1, "the refused lock left nothing behind"
    assert resume(backup)["complete"]
    assert not lock_objects(cli.repo)


def test_shared_locks_are_granted_alongside_a_running_backup(
    initialized_cli: Cli, imaging: Path, processes: list[subprocess.Popen[str]]
) -> None:
    cli = initialized_cli
    backup = backup_holding_its_lock(cli, imaging, processes)
    backend = open_backend(str(cli.repo))
    first = RepositoryLock(backend, exclusive=False, purpose="wal-push")
    second = RepositoryLock(backend, exclusive=False, purpose="check")
    first.acquire()
    second.acquire()
    try:
        assert len(read_locks(backend).locks) == 3
    finally:
        second.release()
        first.release()
    assert resume(backup)["complete"]
    assert not lock_objects(cli.repo)


def test_backup_is_refused_while_an_exclusive_lock_is_held(
    initialized_cli: Cli, imaging: Path
) -> None:
    cli = initialized_cli
    lock = exclusive_lock(cli.repo)
    lock.acquire()
    try:
        done = cli("backup", str(imaging), check=False)
        assert done.returncode == EXIT_LOCKED, done.stderr
        assert f"exclusive lock by pid {os.getpid()} on {socket.gethostname()}" in done.stderr
        assert not list((cli.repo / "snapshots").iterdir())
        assert not [p for p in (cli.repo / "data").rglob("*") if p.is_file()]
    finally:
        lock.release()
    cli("backup", str(imaging))


def test_lock_of_a_killed_backup_is_named_as_stale_and_blocks_nothing(
    initialized_cli: Cli, imaging: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """Its process ran in this PID namespace and is gone: it can commit nothing any more."""
    cli = initialized_cli
    backup = start_backup(cli, imaging, "imaging", processes)
    wait_for(backup, lambda: bool(lock_objects(cli.repo)))
    backup.kill()
    backup.communicate()
    lock = exclusive_lock(cli.repo)
    lock.acquire()
    lock.release()
    (note,) = lock.notes
    assert f"pid {backup.pid} on {socket.gethostname()}" in note
    assert "stale: that process is no longer running" in note
    assert "medvault unlock" in note


def test_unlock_removes_the_lock_of_a_dead_process_and_names_it(
    initialized_cli: Cli, processes: list[subprocess.Popen[str]]
) -> None:
    cli = initialized_cli
    holder = lock_holder(cli.repo, processes)
    holder.kill()
    holder.communicate()
    assert len(lock_objects(cli.repo)) == 1

    done = cli("unlock")
    assert "removed" in done.stdout
    assert f"pid {holder.pid} on {socket.gethostname()}" in done.stdout
    assert not lock_objects(cli.repo)
    lock = exclusive_lock(cli.repo)
    lock.acquire()
    lock.release()


def test_unlock_leaves_the_lock_of_a_live_process_in_place(
    initialized_cli: Cli, processes: list[subprocess.Popen[str]]
) -> None:
    cli = initialized_cli
    holder = lock_holder(cli.repo, processes)
    held = lock_objects(cli.repo)

    done = cli("unlock")
    assert "no stale locks" in done.stdout
    assert f"still held: shared lock by pid {holder.pid}" in done.stderr
    assert lock_objects(cli.repo) == held
    with pytest.raises(RepositoryLocked) as refused:
        exclusive_lock(cli.repo).acquire()
    assert "stale" not in str(refused.value)

    holder.communicate(input="")
    assert holder.returncode == 0
    assert not lock_objects(cli.repo)
