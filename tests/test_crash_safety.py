"""A backup killed with SIGKILL at any moment leaves a consistent repository.

Afterwards `check --read-data` passes (packs the dead run left unreferenced are only a note),
every earlier snapshot restores byte for byte, and the next backup succeeds, reusing whatever
the dead run had already named in an index. Kill points are found by polling the repository
directory for the objects the run writes, so most of them are deterministic.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import PASSWORD, Cli, tree_digest
from medvault.backends import open_backend
from medvault.recovery.files import restore_files
from medvault.repository.keys import Credential
from medvault.repository.packs import DATA_BLOB
from medvault.repository.repo import ChunkerParams, Repository

MiB = 1024 * 1024
TEMP_PREFIX = ".tmp-"
POLL = 0.001
# Default repositories (16 MiB packs): a few packs' worth of incompressible data.
LARGE_FILES, LARGE_FILE_SIZE = 6, 8 * MiB
# Repositories with small chunks and packs, so that a modest run writes ~55 packs and an
# intermediate index after the first 32 (INDEX_EVERY_PACKS in repository/writer.py).
SMALL_FILES, SMALL_FILE_SIZE = 5, 4 * MiB
SMALL_CHUNKER = ChunkerParams(min_size=64 * 1024, avg_size=128 * 1024, max_size=512 * 1024)
SMALL_PACK_SIZE = 256 * 1024

Digest = dict[str, tuple[str, int, int, bytes]]


# -- helpers -------------------------------------------------------------------------------


def restored(target: Path, source: Path) -> Path:
    """Snapshots mirror absolute paths: /x/data restores to target/x/data."""
    return target / str(source).lstrip("/")


def backup_json(cli: Cli, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cli("backup", *args, "--json").stdout)
    return result


def objects(folder: Path) -> set[str]:
    """Complete objects under a repository folder (one level of subfolders), as the backend
    lists them: hidden temporary files are not objects."""
    found: set[str] = set()
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found |= {f"{entry.name}/{name}" for name in objects(Path(entry.path))}
        else:
            found.add(entry.name)
    return found


def temp_files(repo: Path) -> list[Path]:
    return [p for p in repo.rglob(f"{TEMP_PREFIX}*") if p.is_file()]


def data_temp_files(repo: Path) -> bool:
    data = repo / "data"
    for sub in os.scandir(data):
        if sub.is_dir() and any(n.startswith(TEMP_PREFIX) for n in os.listdir(sub.path)):
            return True
    return False


def wait_for(
    proc: subprocess.Popen[str], condition: Callable[[], bool], timeout: float = 60.0
) -> bool:
    """True as soon as `condition()` holds (polled every ~1 ms) while `proc` runs; False if
    the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(POLL)
    raise AssertionError(f"condition not reached within {timeout} s")


def kill_when(
    proc: subprocess.Popen[str], condition: Callable[[], bool], timeout: float = 60.0
) -> bool:
    """SIGKILL `proc` as soon as `condition()` holds. True if it died by our signal, False if
    it ended on its own first."""
    if wait_for(proc, condition, timeout):
        proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return proc.returncode == -signal.SIGKILL


@dataclass(frozen=True)
class Earlier:
    snapshot: str
    source: Path
    digest: Digest


@dataclass(frozen=True)
class State:
    packs: set[str]
    indexes: set[str]
    snapshots: set[str]


def state(cli: Cli) -> State:
    return State(
        objects(cli.repo / "data"), objects(cli.repo / "index"), objects(cli.repo / "snapshots")
    )


# -- fixtures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A repository holding two earlier snapshots, built once and copied for each test. The
    copies share its keys, so in-process checks need not derive the key again each time."""

    repo: Path
    history: list[Earlier]
    opened: Repository


@dataclass(frozen=True)
class Scenario:
    cli: Cli
    history: list[Earlier]
    bulk: Path
    bulk_size: int
    bulk_digest: Digest
    tmp_path: Path
    template: Template

    def open_repo(self) -> Repository:
        keys = self.template.opened
        return Repository(open_backend(str(self.cli.repo)), keys.master, keys.config, keys.slot)

    def indexed_data_bytes(self) -> int:
        """Plaintext bytes of data blobs that some index object names."""
        repo = self.open_repo()
        try:
            return sum(
                e.raw_length
                for p in repo.index.packs()
                for e in p.entries
                if e.blob_type == DATA_BLOB
            )
        finally:
            repo.close()

    def restore(self, snapshot: str, name: str, source: Path) -> Digest:
        """Restore a snapshot in-process (every blob verified) and digest what came back."""
        target = self.tmp_path / name
        repo = self.open_repo()
        try:
            restore_files(repo, repo.load_snapshot(snapshot), str(target))
        finally:
            repo.close()
        return tree_digest(restored(target, source))


@dataclass(frozen=True)
class Bulk:
    path: Path
    size: int
    digest: Digest


def make_bulk(root: Path, files: int, size: int) -> Bulk:
    """Incompressible imaging data in several files and folders."""
    for i in range(files):
        path = root / f"series-{i % 3}" / f"img-{i:03}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return Bulk(root, files * size, tree_digest(root))


def make_history(cli: Cli, source: Path) -> list[Earlier]:
    """Two snapshots of a small records tree, the second after an edit."""
    (source / "letters").mkdir(parents=True)
    (source / "labs").mkdir()
    (source / "letters/referral.txt").write_bytes(b"Dear colleague,\n" * 5000)
    (source / "labs/panel.csv").write_bytes(os.urandom(700_000))
    (source / "current").symlink_to("labs/panel.csv")
    history = [Earlier(str(backup_json(cli, str(source))["snapshot"]), source, tree_digest(source))]
    (source / "letters/referral.txt").write_bytes(b"Dear colleague, amended.\n" * 5000)
    (source / "labs/extra.bin").write_bytes(os.urandom(1_300_000))
    history.append(
        Earlier(str(backup_json(cli, str(source))["snapshot"]), source, tree_digest(source))
    )
    # Later edits must not matter: each snapshot is compared with its own digest.
    (source / "labs/panel.csv").write_bytes(b"overwritten after the backups")
    return history


def make_template(root: Path, **init: object) -> Template:
    cli = Cli(root / "repo", root)
    repo = Repository.init(
        open_backend(str(cli.repo)), Credential(passphrase=PASSWORD.encode()), **init
    )
    repo.close()
    return Template(cli.repo, make_history(cli, root / "records"), repo)


@pytest.fixture(scope="module")
def large_bulk(tmp_path_factory: pytest.TempPathFactory) -> Bulk:
    return make_bulk(tmp_path_factory.mktemp("large") / "imaging", LARGE_FILES, LARGE_FILE_SIZE)


@pytest.fixture(scope="module")
def small_bulk(tmp_path_factory: pytest.TempPathFactory) -> Bulk:
    return make_bulk(tmp_path_factory.mktemp("small") / "imaging", SMALL_FILES, SMALL_FILE_SIZE)


@pytest.fixture(scope="module")
def default_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("default-template"))


@pytest.fixture(scope="module")
def small_pack_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(
        tmp_path_factory.mktemp("small-template"),
        chunker=SMALL_CHUNKER,
        pack_size=SMALL_PACK_SIZE,
    )


def scenario(cli: Cli, template: Template, bulk: Bulk, tmp_path: Path) -> Scenario:
    shutil.copytree(template.repo, cli.repo, symlinks=True)
    return Scenario(cli, template.history, bulk.path, bulk.size, bulk.digest, tmp_path, template)


@pytest.fixture
def big_run(cli: Cli, default_template: Template, large_bulk: Bulk, tmp_path: Path) -> Scenario:
    """A default repository with history, and 48 MiB to back up: 16 MiB packs are written
    while later files are still being read."""
    return scenario(cli, default_template, large_bulk, tmp_path)


@pytest.fixture
def run(cli: Cli, default_template: Template, small_bulk: Bulk, tmp_path: Path) -> Scenario:
    """A default repository with history, and 20 MiB to back up: fewer than 32 packs, so
    the run's only index is its final one."""
    return scenario(cli, default_template, small_bulk, tmp_path)


@pytest.fixture
def many_packs_run(
    cli: Cli, small_pack_template: Template, small_bulk: Bulk, tmp_path: Path
) -> Scenario:
    """A small-pack repository with history, and 20 MiB to back up: ~55 packs, with an
    intermediate index after the first 32."""
    return scenario(cli, small_pack_template, small_bulk, tmp_path)


def start_backup(s: Scenario, processes: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    proc = s.cli.popen("backup", str(s.bulk), "--source", "imaging", "--json")
    processes.append(proc)
    return proc


# -- what must hold after any kill ---------------------------------------------------------


def assert_consistent(s: Scenario) -> dict[str, Any]:
    """`check --read-data` passes, and every snapshot restores byte for byte: the earlier
    ones, and one the killed run may have finished just before it died."""
    done = s.cli("check", "--read-data", "--json", check=False)
    report: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == 0, f"check failed after a killed backup: {report['errors']}"
    assert report["ok"] and not report["errors"]
    assert report["packs_read"] == report["packs"]

    for n, earlier in enumerate(s.history):
        assert s.restore(earlier.snapshot, f"earlier-{n}", earlier.source) == earlier.digest

    known = {e.snapshot for e in s.history}
    for n, snapshot in enumerate(sorted(objects(s.cli.repo / "snapshots") - known)):
        assert s.restore(snapshot, f"killed-{n}", s.bulk) == s.bulk_digest
    return report


def assert_next_backup_works(s: Scenario, *, restore: bool = True) -> int:
    """The next backup of the same data succeeds (and restores byte for byte: worth proving
    when it reuses what the killed run stored); returns its bytes_added."""
    result = backup_json(s.cli, str(s.bulk), "--source", "imaging")
    assert result["complete"]
    if restore:
        assert s.restore(str(result["snapshot"]), "next", s.bulk) == s.bulk_digest
    return int(result["bytes_added"])


# -- kill points ---------------------------------------------------------------------------


def test_backup_killed_once_it_holds_its_lock_leaves_earlier_snapshots_intact(
    run: Scenario, processes: list[subprocess.Popen[str]]
) -> None:
    before = state(run.cli)
    proc = start_backup(run, processes)
    assert kill_when(proc, lambda: bool(objects(run.cli.repo / "locks")))
    assert state(run.cli) == before, "nothing may appear before the first pack is complete"
    assert_consistent(run)
    # The dead run's lock is shared: it must not stop the next backup.
    assert objects(run.cli.repo / "locks")
    assert assert_next_backup_works(run, restore=False) >= run.bulk_size


def test_backup_killed_while_writing_its_first_pack_leaves_only_a_hidden_temp_file(
    run: Scenario, processes: list[subprocess.Popen[str]]
) -> None:
    before = state(run.cli)
    proc = start_backup(run, processes)
    assert kill_when(proc, lambda: data_temp_files(run.cli.repo))
    after = state(run.cli)
    assert after.indexes == before.indexes and after.snapshots == before.snapshots
    if after.packs == before.packs:  # killed before the rename: the partial pack is hidden
        assert any(p.parent.parent.name == "data" for p in temp_files(run.cli.repo))
    assert_consistent(run)
    assert_next_backup_works(run, restore=False)


def test_backup_killed_after_its_first_pack_leaves_repository_consistent(
    big_run: Scenario, processes: list[subprocess.Popen[str]]
) -> None:
    before = state(big_run.cli)
    proc = start_backup(big_run, processes)
    assert kill_when(proc, lambda: objects(big_run.cli.repo / "data") != before.packs)
    after = state(big_run.cli)
    assert after.packs > before.packs
    assert after.indexes == before.indexes, "killed before its index was due"
    assert after.snapshots == before.snapshots
    report = assert_consistent(big_run)
    assert any("not referenced by any index" in n for n in report["notes"])
    # Nothing the killed run stored is indexed, so nothing of it can be reused.
    assert assert_next_backup_works(big_run, restore=False) >= big_run.bulk_size


def test_backup_killed_after_an_intermediate_index_reuses_the_indexed_packs(
    many_packs_run: Scenario, processes: list[subprocess.Popen[str]]
) -> None:
    s = many_packs_run
    before = state(s.cli)
    indexed_before = s.indexed_data_bytes()
    proc = start_backup(s, processes)
    assert kill_when(proc, lambda: objects(s.cli.repo / "index") != before.indexes)
    assert state(s.cli).snapshots == before.snapshots, "killed before its snapshot was due"
    indexed_by_killed_run = s.indexed_data_bytes() - indexed_before
    assert 0 < indexed_by_killed_run < s.bulk_size
    assert_consistent(s)
    added = assert_next_backup_works(s)
    # A fresh full backup of incompressible data adds at least bulk_size bytes.
    assert added < s.bulk_size
    assert added <= s.bulk_size - indexed_by_killed_run + MiB


def test_backup_killed_when_its_final_index_appears_reuses_everything_next_time(
    run: Scenario, processes: list[subprocess.Popen[str]]
) -> None:
    before = state(run.cli)
    proc = start_backup(run, processes)
    # Fewer than 32 packs: the first index this run writes is its final one, just before the
    # snapshot. Should the snapshot win the race, the same invariants hold.
    kill_when(proc, lambda: objects(run.cli.repo / "index") != before.indexes)
    after = state(run.cli)
    assert after.indexes > before.indexes
    assert len(after.snapshots - before.snapshots) <= 1
    assert_consistent(run)
    assert assert_next_backup_works(run) < MiB


@pytest.mark.parametrize("seed", [11, 23, 37])
def test_backup_killed_at_a_random_moment_leaves_repository_consistent(
    many_packs_run: Scenario, processes: list[subprocess.Popen[str]], seed: int
) -> None:
    s = many_packs_run
    indexed_before = s.indexed_data_bytes()
    # Timed from the moment the run holds its lock, so that kills land inside the backup
    # whatever the interpreter's start-up time on this machine.
    delay = random.Random(seed).uniform(0.0, 0.6)
    proc = start_backup(s, processes)
    if wait_for(proc, lambda: bool(objects(s.cli.repo / "locks"))):
        deadline = time.monotonic() + delay
        kill_when(proc, lambda: time.monotonic() >= deadline)
    else:
        proc.communicate()
    indexed_by_killed_run = s.indexed_data_bytes() - indexed_before
    assert_consistent(s)
    # Whatever the killed run got into an index is not stored again.
    assert assert_next_backup_works(s) <= s.bulk_size - indexed_by_killed_run + MiB


def test_leftover_temp_files_are_ignored_by_check_restore_and_backup(run: Scenario) -> None:
    repo = run.cli.repo
    pack = next(p for p in (repo / "data").rglob("*") if p.is_file())
    index = next((repo / "index").iterdir())
    snapshot = next((repo / "snapshots").iterdir())
    planted = {
        pack.parent / f"{TEMP_PREFIX}{pack.name}.0badf00d": pack.read_bytes()[:1000],
        repo / "data" / "ab" / f"{TEMP_PREFIX}{'ab' * 32}.12345678": os.urandom(5000),
        index.parent / f"{TEMP_PREFIX}{index.name}.deadbeef": index.read_bytes()[:-7],
        snapshot.parent / f"{TEMP_PREFIX}{snapshot.name}.cafe0001": b"",
        repo / "locks" / f"{TEMP_PREFIX}{'c' * 32}.cafe0002": b'{"exclusive": tr',
        repo / "keys" / f"{TEMP_PREFIX}{'d' * 64}.cafe0003": b"{",
    }
    for path, content in planted.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)

    listing = json.loads(run.cli("snapshots", "--json").stdout)
    assert {s["id"] for s in listing} == {e.snapshot for e in run.history}
    report = assert_consistent(run)
    assert TEMP_PREFIX not in json.dumps(report)
    assert_next_backup_works(run)
    assert all(path.exists() for path in planted), "temp files are prune's to remove"
