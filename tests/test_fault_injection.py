"""Fault injection: medvault killed at every named fault point, and an S3 store that fails.

Kill points. A repository with earlier snapshots of three sources, two archived WAL segments
and two key slots (plus an empty and a mirrored copy sharing its keys) is copied for each
test. The command runs with one point armed (MEDVAULT_FAULTS="point=kill", see
src/medvault/faults.py) and must die there by SIGKILL. Then: every lock the dead process
left is stale and blocks nothing; `check --read-data` (the next command) finds no error;
every earlier snapshot still restores byte for byte; the interrupted command, run again,
succeeds (or says that its work was done before it died); and after that, `check
--read-data` is clean again and every snapshot restores. A test fails when a point in the
code is not killed here.

S3 faults. Through a proxy in front of the local S3 server (tests/s3faults.py): throttling,
server errors before and after the store carried a write out, answers held past the
client's read timeout, and bodies cut short. backup, wal-push, restore, check --read-data
and wal-fetch either succeed through retries or fail with one line; restored bytes are
exact, and every committed snapshot restores.

The counts (points, runs, restores, faults injected) are summed over the passing tests and
printed at the end of the run (conftest.py); `make faults` runs this suite.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.faultpoints import faults_env, points_in_source
from tests.pgcluster import PgWorld, as_postgres
from tests.s3faults import (
    INTERNAL_ERROR,
    Cut,
    Fault,
    FlakyProxy,
    Hold,
    Request,
    busy_store,
    every,
)
from tests.test_drills import _no_drill_left, _physical_world
from tests.test_pg_wal import crafted_segment

from conftest import MEDVAULT, PASSWORD, Cli, S3Server, tree_digest
from medvault.backends import open_backend
from medvault.errors import WrongPassphrase
from medvault.recovery.files import restore_files
from medvault.repository.check import check_repository
from medvault.repository.copy import RepositoryCopier
from medvault.repository.keys import Credential, MasterKey
from medvault.repository.locks import read_locks
from medvault.repository.repo import ChunkerParams, Repository
from medvault.repository.wal import WalArchive
from medvault.sources.files import BackupOptions, backup_files
from medvault.sources.postgres.wal import push_file

MiB = 1024 * 1024
SECOND = "a second passphrase, for the key tests"
NEW = "the passphrase after a change"
NEWER = "the passphrase after a second change"
# Small chunks and packs: a 6 MiB backup writes ~45 packs, and an intermediate index
# after the first 32 (INDEX_EVERY_PACKS in repository/writer.py).
SMALL_CHUNKER = ChunkerParams(min_size=32 * 1024, avg_size=64 * 1024, max_size=256 * 1024)
SMALL_PACK_SIZE = 128 * 1024
SYSTEM_ID = 7_000_000_000_000_000_001
DOCS = Path(__file__).resolve().parent.parent / "docs"

Digest = dict[str, tuple[str, int, int, bytes]]


def wal_name(number: int) -> str:
    return f"{1:08X}{0:08X}{number:08X}"


def write_segment(folder: Path, number: int) -> Path:
    path = folder / wal_name(number)
    path.write_bytes(crafted_segment(path.name, SYSTEM_ID, 16 * MiB))
    return path


# -- the template: built once per test process, copied for each test -----------------------


@dataclass(frozen=True)
class Expected:
    source: Path  # the directory backed up (snapshots mirror absolute paths)
    digest: Digest


@dataclass(frozen=True)
class Template:
    root: Path
    master: MasterKey
    snapshots: dict[str, str]  # label -> snapshot id
    expected: dict[str, Expected]  # snapshot id -> what it restores to
    by_source: dict[str, Expected]  # what a new snapshot of an unchanging source restores to
    second_slot: str
    data: dict[str, Path]


def _backup(repo: Repository, source: str, path: Path) -> str:
    return backup_files(repo, BackupOptions(source, [str(path)])).snapshot.id


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    root = tmp_path_factory.mktemp("fault-template")
    repos = root / "repos"
    repo = Repository.init(
        open_backend(str(repos / "primary")),
        Credential(passphrase=PASSWORD.encode()),
        chunker=SMALL_CHUNKER,
        pack_size=SMALL_PACK_SIZE,
    )
    labels: dict[str, str] = {}
    expected: dict[str, Expected] = {}

    # Records, edited between two snapshots (each is compared with its own digest).
    records = root / "data" / "records"
    (records / "letters").mkdir(parents=True)
    (records / "labs").mkdir()
    (records / "letters/referral.txt").write_bytes(b"Dear colleague,\n" * 5000)
    (records / "labs/panel.csv").write_bytes(os.urandom(700_000))
    (records / "current").symlink_to("labs/panel.csv")
    for label in ("R1", "R2"):
        labels[label] = _backup(repo, "records", records)
        expected[labels[label]] = Expected(records, tree_digest(records))
        (records / "letters/referral.txt").write_bytes(b"Dear colleague, amended.\n" * 5000)
        (records / "labs/extra.bin").write_bytes(os.urandom(1_300_000))

    # Intake: X holds 40 small files, Y and Z the even half of them. Once X is forgotten
    # its data packs are half used: a prune repacks them.
    full, half = root / "data" / "intake-full", root / "data" / "intake-half"
    full.mkdir()
    half.mkdir()
    for n in range(40):
        content = os.urandom(20_000)
        (full / f"form-{n:02}.pdf").write_bytes(content)
        if n % 2 == 0:
            (half / f"form-{n:02}.pdf").write_bytes(content)
    labels["X"] = _backup(repo, "intake", full)
    expected[labels["X"]] = Expected(full, tree_digest(full))
    for label in ("Y", "Z"):
        labels[label] = _backup(repo, "intake", half)
        expected[labels[label]] = Expected(half, tree_digest(half))

    wal_dir = root / "data" / "pg_wal"
    wal_dir.mkdir()
    archive = WalArchive(repo, "emr")
    for number in (1, 2):
        push_file(archive, str(write_segment(wal_dir, number)))

    second = repo.add_key(Credential(passphrase=SECOND.encode()), "second")

    # Two more repositories sharing its keys: an empty one (to copy to) and a full copy
    # (to repair from).
    Repository.init(
        open_backend(str(repos / "blank")), Credential(passphrase=PASSWORD.encode()), like=repo
    )
    mirror = Repository.init(
        open_backend(str(repos / "mirror")), Credential(passphrase=PASSWORD.encode()), like=repo
    )
    copier = RepositoryCopier(repo, mirror)
    copier.copy_snapshots(repo.list_snapshots())
    copier.copy_wal()

    imaging = root / "data" / "imaging"
    for i in range(6):
        path = imaging / f"series-{i % 2}" / f"img-{i}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(MiB))
    by_source = {
        "imaging": Expected(imaging, tree_digest(imaging)),
        "intake": Expected(half, tree_digest(half)),
    }
    return Template(
        root,
        repo.master,
        labels,
        expected,
        by_source,
        second.slot_id,
        {"records": records, "imaging": imaging, "intake": half, "pg_wal": wal_dir},
    )


# -- one test's world ------------------------------------------------------------------------


class World:
    """A copy of the template's repositories, and the `medvault` command pointed at its
    primary."""

    def __init__(self, template: Template, tmp_path: Path, tally: Counter[str]) -> None:
        self.template = template
        self.tmp = tmp_path
        self.tally = tally
        shutil.copytree(template.root / "repos", tmp_path / "repos", symlinks=True)
        self.repos = {name: tmp_path / "repos" / name for name in ("primary", "blank", "mirror")}
        self.cli = Cli(self.repos["primary"], tmp_path)
        self.restores = 0

    def snapshot(self, label: str) -> str:
        return self.template.snapshots[label]

    def use_password(self, password: str) -> None:
        self.cli.env["MEDVAULT_PASSWORD"] = password

    def open(self, repo: str = "primary") -> Repository:
        opened = Repository.open_sharing(open_backend(str(self.repos[repo])), self.template.master)
        assert opened is not None
        return opened

    def opens_with(self, password: str) -> bool:
        try:
            Repository.open(
                open_backend(str(self.repos["primary"])), Credential(passphrase=password.encode())
            ).close()
        except WrongPassphrase:
            return False
        return True

    def check(self, repo: str = "primary") -> subprocess.CompletedProcess[str]:
        """`check --read-data`: no error, every pack read."""
        done = self.cli(
            "--repo", str(self.repos[repo]), "check", "--read-data", "--json", check=False
        )
        assert done.returncode == 0, f"check of {repo} failed: {done.stdout} {done.stderr}"
        report = json.loads(done.stdout)
        assert report["ok"] and not report["errors"]
        assert report["packs_read"] == report["packs"]
        self.tally["checks clean"] += 1
        return done

    def restore_all(self, repo: str = "primary", *, keep: frozenset[str] = frozenset()) -> None:
        """Every snapshot present restores byte for byte, and those in `keep` are present."""
        opened = self.open(repo)
        try:
            present = opened.snapshot_ids()
            missing = keep - set(present)
            assert not missing, f"snapshots lost from {repo}: {sorted(missing)}"
            for snapshot_id in present:
                snap = opened.load_snapshot(snapshot_id)
                want = (
                    self.template.expected.get(snapshot_id) or self.template.by_source[snap.source]
                )
                self.restores += 1
                target = self.tmp / f"restored-{repo}-{self.restores}"
                restore_files(opened, snap, str(target))
                got = tree_digest(target / str(want.source).lstrip("/"))
                assert got == want.digest, f"snapshot {snapshot_id[:12]} restored wrong"
                shutil.rmtree(target)
                self.tally["snapshots restored"] += 1
        finally:
            opened.close()

    def stale_locks(self, repo: str = "primary") -> list[str]:
        """The locks left behind: every one must be stale (its process is gone)."""
        with open_backend(str(self.repos[repo])) as backend:
            table = read_locks(backend)
        for lock in table.locks:
            assert lock.stale_reason(None) == "that process is no longer running", lock
        return [lock.describe() for lock in table.locks]

    def fetch_wal(self, number: int) -> bytes | None:
        opened = self.open()
        try:
            return WalArchive(opened, "emr").fetch(wal_name(number))
        finally:
            opened.close()


@pytest.fixture
def world(template: Template, tmp_path: Path, fault_tally: Counter[str]) -> World:
    return World(template, tmp_path, fault_tally)


# -- the kill points -------------------------------------------------------------------------


Args = Callable[[World], list[str]]
Check = Callable[[World, subprocess.CompletedProcess[str]], None]


@dataclass(frozen=True)
class Kill:
    """One kill point and the command that reaches it."""

    point: str
    command: Args
    prepare: Callable[[World], None] | None = None
    rerun_exit: int = 0  # of the command run again
    after_kill: Callable[[World], None] | None = None
    after: Check | None = None  # after the rerun
    repos: tuple[str, ...] = ("primary",)  # checked and restored after the kill and the rerun
    # Template snapshots the command may remove (all others must survive).
    expendable: frozenset[str] = frozenset()
    password_after_kill: str = PASSWORD
    password_after: str | None = None  # the one that opens after the rerun, when it changed
    # Check and restore again after the rerun; not for commands that write no data.
    verify_again: bool = True
    via: str = ""  # names the case when more than one command reaches the point


def backup_imaging(w: World) -> list[str]:
    return ["backup", str(w.template.data["imaging"]), "--source", "imaging", "--json"]


def backup_kill(point: str, after: Check | None = None) -> Kill:
    return Kill(point, backup_imaging, after=after)


def reused(at_most: int) -> Check:
    """The rerun stored at most this much: the rest the killed run had indexed."""

    def check(w: World, done: subprocess.CompletedProcess[str]) -> None:
        added = json.loads(done.stdout)["bytes_added"]
        assert added <= at_most, f"added {added} bytes again"

    return check


def committed_before_it_died(w: World, done: subprocess.CompletedProcess[str]) -> None:
    opened = w.open()
    try:
        imaging = [s for s in opened.list_snapshots() if s.source == "imaging"]
    finally:
        opened.close()
    assert len(imaging) == 2, "the killed run's snapshot and the rerun's"


# prune: X is forgotten first; its data packs are half used (Y and Z share the even files)
# and are repacked; its tree packs are deleted.
def forget_x(w: World) -> None:
    w.cli.remove(f"snapshots/{w.snapshot('X')}")


def prune_command(w: World) -> list[str]:
    return ["prune", "--young", "0s", "--repack-threshold", "0.2", "--json"]


def prune_finished(w: World, done: subprocess.CompletedProcess[str]) -> None:
    assert w.cli.objects("prune/condemned") == [], "every condemned record finished"
    assert w.cli.objects("prune/waits") == []
    opened = w.open()
    try:
        opened.index  # noqa: B018 - loads the index, which fills pack_indexes
        listed = {obj.name.rsplit("/", 1)[1] for obj in opened.backend.list("data")}
        assert listed == set(opened.pack_indexes), "no pack left unindexed, none missing"
    finally:
        opened.close()


def prune_kill(point: str) -> Kill:
    return Kill(
        point, prune_command, prepare=forget_x, after=prune_finished, expendable=frozenset({"X"})
    )


# forget: the retention policy of source intake keeps the last snapshot (Z) and removes X
# and Y, one after the other.
def intake_policy(w: World) -> None:
    config = w.tmp / "medvault.toml"
    config.write_text(
        f'[source.intake]\nkind = "files"\npaths = ["{w.template.data["intake"]}"]\n\n'
        "[source.intake.retention]\nkeep_last = 1\n"
    )
    w.cli.env["MEDVAULT_CONFIG"] = str(config)


def only_z_left(w: World, done: subprocess.CompletedProcess[str]) -> None:
    ids = set(w.cli.objects("snapshots"))
    assert f"snapshots/{w.snapshot('Z')}" in ids
    assert not {f"snapshots/{w.snapshot(x)}" for x in "XY"} & ids


def forget_kill(point: str) -> Kill:
    return Kill(
        point,
        lambda w: ["forget"],
        prepare=intake_policy,
        after=only_z_left,
        expendable=frozenset({"X", "Y"}),
    )


# copy: everything in the primary to the empty repository sharing its keys.
def copy_command(w: World) -> list[str]:
    return ["copy", "--from", str(w.repos["primary"]), "--to", str(w.repos["blank"]), "--json"]


def copied_everything(w: World, done: subprocess.CompletedProcess[str]) -> None:
    assert w.cli.objects("snapshots") == _objects(w.repos["blank"], "snapshots")
    for number in (1, 2):
        opened = w.open("blank")
        try:
            assert WalArchive(opened, "emr").fetch(wal_name(number)) == w.fetch_wal(number)
        finally:
            opened.close()


def _objects(repo: Path, folder: str) -> list[str]:
    with open_backend(str(repo)) as backend:
        return sorted(obj.name for obj in backend.list(folder))


def copy_kill(point: str) -> Kill:
    """The primary is only read: what is checked and restored is the copy."""
    return Kill(point, copy_command, after=copied_everything, repos=("blank",))


# repair: a pack of the primary is damaged (and for repair.before-copy, snapshot Z lost);
# the mirror holds good copies.
def damage_a_pack(w: World) -> None:
    with open_backend(str(w.repos["primary"])) as backend:
        name = max(backend.list("data"), key=lambda o: o.size).name
    w.cli.damage(name, lambda raw: raw[:1000] + bytes([raw[1000] ^ 1]) + raw[1001:])


def damage_a_pack_and_lose_z(w: World) -> None:
    damage_a_pack(w)
    w.cli.remove(f"snapshots/{w.snapshot('Z')}")


def z_is_back(w: World, done: subprocess.CompletedProcess[str]) -> None:
    assert f"snapshots/{w.snapshot('Z')}" in w.cli.objects("snapshots")


def repair_command(w: World) -> list[str]:
    return ["repair", "--from", str(w.repos["mirror"]), "--json"]


# wal-push: a new segment; asynchronously, three ready segments in a pg_wal directory.
def new_segment(w: World) -> Path:
    folder = w.tmp / "pg_wal"
    folder.mkdir(exist_ok=True)
    return folder / wal_name(3)


def prepare_segment(w: World) -> None:
    write_segment(new_segment(w).parent, 3)


def prepare_ready_segments(w: World) -> None:
    folder = new_segment(w).parent
    (folder / "archive_status").mkdir()
    for number in (3, 4, 5):
        write_segment(folder, number)
        (folder / "archive_status" / f"{wal_name(number)}.ready").touch()


def archived_as_pushed(numbers: tuple[int, ...]) -> Check:
    def check(w: World, done: subprocess.CompletedProcess[str]) -> None:
        folder = new_segment(w).parent
        for number in numbers:
            assert w.fetch_wal(number) == (folder / wal_name(number)).read_bytes()

    return check


def push_async_like_postgresql(w: World, done: subprocess.CompletedProcess[str]) -> None:
    """PostgreSQL calls archive_command for each ready file in turn (the first call was the
    rerun) and marks it done: each must succeed, from the spool's marker or by pushing."""
    folder = new_segment(w).parent
    status = folder / "archive_status"
    (status / f"{wal_name(3)}.ready").rename(status / f"{wal_name(3)}.done")
    for number in (4, 5):
        w.cli("wal-push", "--async", "emr", str(folder / wal_name(number)))
        (status / f"{wal_name(number)}.ready").rename(status / f"{wal_name(number)}.done")
    archived_as_pushed((3, 4, 5))(w, done)


# key commands
def new_password(password: str) -> Callable[[World], None]:
    def prepare(w: World) -> None:
        w.cli.env["MEDVAULT_NEW_PASSWORD"] = password

    return prepare


def can_open(w: World, *yes: str, no: tuple[str, ...] = ()) -> None:
    for password in yes:
        assert w.opens_with(password), f"{password!r} no longer opens the repository"
    for password in no:
        assert not w.opens_with(password), f"{password!r} still opens the repository"


def remove_second_slot(w: World) -> list[str]:
    return ["key", "remove", w.template.second_slot]


def remove_gone_already(w: World, done: subprocess.CompletedProcess[str]) -> None:
    assert "no key slot matches" in done.stderr and done.stderr.count("\n") == 1
    can_open(w, PASSWORD, no=(SECOND,))


# init, in an empty directory of its own
def fresh(w: World) -> Path:
    return w.tmp / "fresh"


def init_fresh(w: World) -> list[str]:
    return ["--repo", str(fresh(w)), "init"]


def half_made_is_no_repository(w: World) -> None:
    done = w.cli("--repo", str(fresh(w)), "snapshots", check=False)
    assert done.returncode == 10 and "no medvault repository" in done.stderr


def fresh_repository_works(w: World, done: subprocess.CompletedProcess[str]) -> None:
    repo = ["--repo", str(fresh(w))]
    w.cli(*repo, "backup", str(w.template.data["intake"]))
    checked = w.cli(*repo, "check", "--read-data")
    assert "no errors found" in checked.stdout
    w.tally["checks clean"] += 1
    w.cli(*repo, "restore", "latest", "--target", str(w.tmp / "out"))
    want = w.template.by_source["intake"]
    assert tree_digest(w.tmp / "out" / str(want.source).lstrip("/")) == want.digest
    w.tally["snapshots restored"] += 1


# unlock: two locks of processes that died holding them
PLANT_LOCK = (
    "import os, sys\n"
    "from medvault.backends import open_backend\n"
    "from medvault.repository.locks import RepositoryLock\n"
    "RepositoryLock(open_backend(sys.argv[1]), exclusive=sys.argv[2] == 'x', "
    "purpose='a process that died').write()\n"
    "os._exit(0)\n"
)


def plant_dead_locks(w: World) -> None:
    for kind in ("x", "s"):
        subprocess.run(
            [sys.executable, "-c", PLANT_LOCK, str(w.repos["primary"]), kind], check=True
        )


def no_lock_left(w: World, done: subprocess.CompletedProcess[str]) -> None:
    assert w.cli.objects("locks") == []


# restore and drills: the newest snapshot of intake (Z), 20 files of patient data.
def intake_files(w: World) -> Path:
    """Where intake's files land under a restore target (snapshots mirror absolute paths)."""
    return Path(str(w.template.data["intake"]).lstrip("/"))


def restore_intake(w: World) -> list[str]:
    """With --overwrite, as a killed restore is run again (the files it left exist)."""
    return ["restore", w.snapshot("Z"), "--target", str(w.tmp / "target"), "--overwrite"]


def in_writing(name: str) -> bool:
    """A file the killed restore was writing, under its temporary name."""
    return Path(name).name.startswith(".medvault-restore-")


def restore_cut_short(w: World) -> None:
    """What the killed restore left: some files complete, none half-written under its name."""
    restored = w.tmp / "target" / intake_files(w)
    want = w.template.by_source["intake"].digest
    got = tree_digest(restored)
    files = [name for name in got if got[name][0] == "file" and not in_writing(name)]
    assert 1 <= len(files) < len([name for name in want if want[name][0] == "file"]), files
    assert all(got[name] == want[name] for name in files), "each file left is whole"


def restored_whole(w: World, done: subprocess.CompletedProcess[str]) -> None:
    restored = w.tmp / "target" / intake_files(w)
    assert tree_digest(restored) == w.template.by_source["intake"].digest
    w.tally["snapshots restored"] += 1


def drill_scratch(w: World) -> Path:
    """The drills' scratch root: the system's temporary directory, which `status` looks at."""
    return w.tmp / "tmp"


def drill_in_scratch(w: World) -> None:
    drill_scratch(w).mkdir()
    w.cli.env["TMPDIR"] = str(drill_scratch(w))


def drill_intake(w: World) -> list[str]:
    return ["drill", "intake", "--json"]


def scratch_left(restored_at_least: int) -> Callable[[World], None]:
    """The killed drill's scratch is there, holding decrypted patient data, and `status`
    reports it as the scratch of a drill that is over."""

    def check(w: World) -> None:
        (left,) = drill_scratch(w).iterdir()
        assert left.name.startswith("medvault-drill-"), left
        got = tree_digest(left / "files" / intake_files(w))
        want = w.template.by_source["intake"].digest
        files = [name for name in got if got[name][0] == "file" and not in_writing(name)]
        assert len(files) >= restored_at_least and all(got[n] == want[n] for n in files)
        (listed,) = json.loads(w.cli("status", "--json", check=False).stdout)["drill_scratch"]
        assert listed["path"] == str(left) and listed["drill_ended"], listed
        assert listed["state"] == "CRITICAL" and listed["server_pid"] is None, listed

    return check


def scratch_swept_by_the_rerun(w: World, done: subprocess.CompletedProcess[str]) -> None:
    result = json.loads(done.stdout)
    assert result["ok"], result
    swept = {c["name"]: c for c in result["checks"]}["leftover scratch"]
    assert swept["ok"] and swept["detail"].startswith("removed "), swept
    assert list(drill_scratch(w).iterdir()) == [], "no decrypted data is left"
    assert json.loads(w.cli("status", "--json", check=False).stdout)["drill_scratch"] == []
    assert len(w.cli.objects("drills")) == 1, "the rerun's result is recorded, the killed one's not"


def drill_kill(point: str, restored_at_least: int) -> Kill:
    """A files drill of intake: it writes only its sealed result (no data to check again)."""
    return Kill(
        point,
        drill_intake,
        prepare=drill_in_scratch,
        after_kill=scratch_left(restored_at_least),
        after=scratch_swept_by_the_rerun,
        verify_again=False,
        via="drill",
    )


KILLS = [
    # backup (files); the writer's points are reached by every command that stores blobs
    Kill("lock.after-write", backup_imaging),
    backup_kill("writer.after-pack"),
    backup_kill("writer.after-index", reused(3 * MiB)),
    backup_kill("writer.after-final-index", reused(MiB // 4)),
    backup_kill("snapshot.before-commit", reused(MiB // 4)),
    backup_kill("snapshot.before-store", reused(MiB // 4)),
    backup_kill("snapshot.after-store", committed_before_it_died),
    # prune
    prune_kill("prune.before-record"),
    prune_kill("prune.after-record"),
    prune_kill("prune.after-waits"),
    prune_kill("prune.after-repack"),
    prune_kill("prune.before-delete"),
    prune_kill("prune.before-index-delete"),
    prune_kill("prune.after-pack-delete"),
    prune_kill("prune.after-delete"),
    # forget
    forget_kill("forget.after-hold-check"),
    forget_kill("forget.after-delete"),
    # copy to a second repository
    copy_kill("copy.after-packs"),
    copy_kill("copy.after-index"),
    copy_kill("copy.after-snapshot"),
    copy_kill("copy.after-wal-object"),
    # repair from the mirror
    Kill("repair.after-pack", repair_command, prepare=damage_a_pack),
    Kill(
        "repair.before-copy",
        repair_command,
        prepare=damage_a_pack_and_lose_z,
        after=z_is_back,
        expendable=frozenset({"Z"}),
    ),
    # wal-push
    Kill(
        "wal.after-store",
        lambda w: ["wal-push", "emr", str(new_segment(w))],
        prepare=prepare_segment,
        after=archived_as_pushed((3,)),
    ),
    Kill(
        "wal.spool.before-marker",
        lambda w: ["wal-push", "--async", "emr", str(new_segment(w))],
        prepare=prepare_ready_segments,
        after=push_async_like_postgresql,
    ),
    Kill(
        "wal.spool.after-marker",
        lambda w: ["wal-push", "--async", "emr", str(new_segment(w))],
        prepare=prepare_ready_segments,
        after=push_async_like_postgresql,
    ),
    # key commands
    Kill(
        "key.after-add",
        lambda w: ["key", "add"],
        verify_again=False,
        prepare=new_password(NEW),
        after=lambda w, done: can_open(w, PASSWORD, NEW),
    ),
    Kill(
        "key.before-delete",
        remove_second_slot,
        verify_again=False,
        after_kill=lambda w: can_open(w, PASSWORD, SECOND),
        after=lambda w, done: can_open(w, PASSWORD, no=(SECOND,)),
    ),
    Kill(
        "key.after-delete",
        remove_second_slot,
        rerun_exit=2,
        after=remove_gone_already,
        verify_again=False,
    ),
    Kill(
        "key.after-new-slot",
        lambda w: ["key", "passwd"],
        verify_again=False,
        prepare=new_password(NEW),
        after_kill=lambda w: can_open(w, PASSWORD, NEW),
        password_after=NEW,
        after=lambda w, done: can_open(w, NEW, SECOND, no=(PASSWORD,)),
    ),
    Kill(
        "key.after-old-slot-delete",
        lambda w: ["key", "passwd"],
        verify_again=False,
        prepare=new_password(NEW),
        password_after_kill=NEW,
        after_kill=lambda w: w.cli.env.update(MEDVAULT_NEW_PASSWORD=NEWER),
        password_after=NEWER,
        after=lambda w, done: can_open(w, NEWER, SECOND, no=(PASSWORD, NEW)),
    ),
    # init
    Kill(
        "init.after-key-slot",
        init_fresh,
        after_kill=half_made_is_no_repository,
        after=fresh_repository_works,
        repos=(),
    ),
    # unlock (and status: both read the store's clock with a probe lock)
    Kill(
        "lock.after-clock-probe",
        lambda w: ["unlock"],
        verify_again=False,
        prepare=plant_dead_locks,
        after=no_lock_left,
    ),
    Kill(
        "unlock.after-remove",
        lambda w: ["unlock"],
        prepare=plant_dead_locks,
        after=no_lock_left,
        verify_again=False,
    ),
    # restore, and files drills (a killed drill's scratch is reported and swept)
    Kill(
        "restore.file-written",
        restore_intake,
        after_kill=restore_cut_short,
        after=restored_whole,
        verify_again=False,
        via="restore",
    ),
    drill_kill("restore.file-written", restored_at_least=1),
    drill_kill("drill.before-cleanup", restored_at_least=20),
]


def verify(w: World, case: Kill) -> str:
    """`check --read-data` of each repository the command wrote to, and every snapshot in it
    restored; what the checks said on stderr."""
    keep = frozenset(
        w.snapshot(label) for label in w.template.snapshots if label not in case.expendable
    )
    said = ""
    for repo in case.repos:
        said += w.check(repo).stderr
        w.restore_all(repo, keep=keep if repo == "primary" else frozenset())
    return said


@pytest.mark.parametrize(
    "case", KILLS, ids=lambda case: f"{case.point}-{case.via}" if case.via else case.point
)
def test_killed_at_a_fault_point_loses_nothing_and_runs_again(case: Kill, world: World) -> None:
    w = world
    if case.prepare is not None:
        case.prepare(w)
    killed = w.cli(*case.command(w), env=faults_env(**{case.point: "kill"}), check=False)
    assert killed.returncode == -signal.SIGKILL, (
        f"{case.point} was not reached: exit {killed.returncode}\n{killed.stderr}"
    )
    w.tally[f"point:{case.point}"] += 1

    # The lock the dead process held is stale: the next command runs, naming it when it
    # would have conflicted.
    left = [lock for repo in w.repos for lock in w.stale_locks(repo)]
    w.tally["stale locks"] += len(left)
    w.use_password(case.password_after_kill)
    if case.after_kill is not None:
        case.after_kill(w)
    said = verify(w, case)
    w.tally["stale locks named"] += said.count("(stale: that process is no longer running)")

    again = w.cli(*case.command(w), check=False)
    assert again.returncode == case.rerun_exit, (
        f"run again: exit {again.returncode}: {again.stderr}"
    )
    assert "Traceback" not in again.stderr
    w.tally["reruns"] += 1
    if case.password_after is not None:
        w.use_password(case.password_after)
    if case.after is not None:
        case.after(w, again)
    if case.verify_again:
        verify(w, case)


# -- a physical drill killed while its throwaway server runs --------------------------------


def test_a_killed_physical_drills_server_is_stopped_by_the_next_drill(
    pg_world: PgWorld, fault_tally: Counter[str]
) -> None:
    """pg_ctl starts the drill's server in a session of its own: it outlives the killed drill,
    serving a restored copy of patient data. `status` says so; the next drill stops that
    server (never deleting a data directory under it), removes the scratch and passes."""
    world = pg_world
    scratch = world.base / "scratch"
    scratch.mkdir()
    as_postgres(scratch)
    _physical_world(world, f'\n[drill]\nscratch = "{scratch}"\n')
    killed = world.cli(
        "drill", "emr", "--json", env=faults_env(**{"drill.server-running": "kill"}), check=False
    )
    assert killed.returncode == 128 + signal.SIGKILL, killed.stderr  # through runuser
    fault_tally["point:drill.server-running"] += 1
    (pgdata,) = scratch.glob("medvault-drill-*/pgdata")
    server = int((pgdata / "postmaster.pid").read_text().split()[0])
    assert Path(f"/proc/{server}/cwd").resolve() == pgdata, "the copy is still being served"

    try:
        (listed,) = json.loads(world.cli("status", "--json", check=False).stdout)["drill_scratch"]
        assert listed["path"] == str(pgdata.parent) and listed["drill_ended"], listed
        assert listed["server_pid"] == server and listed["state"] == "CRITICAL", listed
        said = world.cli("status", check=False).stdout
        assert f"its PostgreSQL server still runs on it (pid {server})" in said, said
        assert "the next drill here stops that server and removes it" in said
        with open_backend(str(world.repo)) as backend:
            assert list(backend.list("locks")) == [], "a drill takes no lock"
        world.cli("check", "--read-data")
        fault_tally["checks clean"] += 1

        again = json.loads(world.cli("drill", "emr", "--json").stdout)
        fault_tally["reruns"] += 1
        assert again["ok"], again
        swept = {c["name"]: c for c in again["checks"]}["leftover scratch"]
        assert swept["ok"] and f"removed {pgdata.parent}" in swept["detail"], swept
        assert (
            f"after stopping the PostgreSQL server the drill had left running on it (pid {server})"
            in swept["detail"]
        )
        assert not Path(f"/proc/{server}/cwd").exists(), "the leftover server is gone"
        _no_drill_left(scratch)
        assert json.loads(world.cli("status", "--json", check=False).stdout)["drill_scratch"] == []
    finally:
        if Path(f"/proc/{server}/cwd").exists():  # a failed test leaves no server behind
            os.kill(server, signal.SIGQUIT)


# Points whose kill needs a PostgreSQL server, killed by the named test above rather than
# by a case of KILLS (whose world is the template repository).
KILLED_WITH_POSTGRESQL = {
    "drill.server-running": test_a_killed_physical_drills_server_is_stopped_by_the_next_drill,
}


def test_every_fault_point_in_the_code_is_documented_and_killed_here() -> None:
    in_code = points_in_source()
    for point, test in KILLED_WITH_POSTGRESQL.items():
        assert f'"{point}": "kill"' in inspect.getsource(test), f"{test.__name__} kills {point}"
    killed = {case.point for case in KILLS} | set(KILLED_WITH_POSTGRESQL)
    assert in_code - killed == set(), "fault points no test kills"
    assert killed - in_code == set(), "tests of fault points the code no longer has"
    text = (DOCS / "architecture.md").read_text()
    section = text.split("## Fault points", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z]+\.[a-z.-]+)` \|", section, re.M))
    assert documented == in_code, "docs/architecture.md lists the fault points"
    assert len(in_code) >= 20


def in_another_pid_namespace(cli: Cli, *args: str) -> subprocess.CompletedProcess[str]:
    """`medvault` as another host (or container) sees the repository: its lock judgement
    cannot use the pids of this one."""
    return subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", MEDVAULT, *args],
        cwd=cli.cwd,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_killed_forget_lock_is_stale_here_at_once_and_elsewhere_after_its_lease(
    world: World,
) -> None:
    w = world
    intake_policy(w)
    killed = w.cli("forget", env=faults_env(**{"forget.after-hold-check": "kill"}), check=False)
    assert killed.returncode == -signal.SIGKILL
    [lock] = w.cli.objects("locks")
    # Another host cannot tell the holder is gone: the exclusive lock holds for its lease.
    elsewhere = in_another_pid_namespace(w.cli, "check")
    assert elsewhere.returncode == 12 and elsewhere.stderr.count("\n") == 1
    assert "exclusive lock" in elsewhere.stderr and "for forget" in elsewhere.stderr
    # Here the process is known to be gone: the next command goes on and names the lock.
    here = w.cli("check")
    assert "(stale: that process is no longer running)" in here.stderr
    # Once the store's clock says it went unrefreshed past its lease (30 min + 5), it is
    # stale everywhere.
    path = w.repos["primary"] / lock
    past = path.stat().st_mtime - 40 * 60
    os.utime(path, (past, past))
    later = in_another_pid_namespace(w.cli, "check")
    assert later.returncode == 0, later.stderr
    assert "(stale: not refreshed for 40 min)" in later.stderr


def test_init_never_clears_a_directory_that_holds_data(world: World) -> None:
    """Only key slots alone are taken for an interrupted init: with packs or snapshots
    there and the config lost, init refuses and removes nothing."""
    w = world
    w.cli.remove("config")
    before = w.cli.objects("keys")
    done = w.cli("init", check=False)
    assert done.returncode == 10 and "already exists and is not empty" in done.stderr
    assert w.cli.objects("keys") == before


# -- S3 faults -------------------------------------------------------------------------------

S3_FAULTS: dict[str, Callable[[Request], Fault | None]] = {
    "throttling and server errors": busy_store,
    "server errors after the store wrote": every(
        2, dataclasses.replace(INTERNAL_ERROR, after_store=True), method="PUT"
    ),
    "answers held past the read timeout": every(9, Hold(2.5)),
    "bodies cut short": every(3, Cut(), method="GET"),
}
READ_TIMEOUT_S = 1.0


def one_line(text: str) -> bool:
    return text.strip().count("\n") == 0 and "Traceback" not in text


@pytest.mark.parametrize("faults", list(S3_FAULTS))
def test_s3_faults_are_retried_and_never_cost_a_byte(
    faults: str,
    s3_server: S3Server,
    tmp_path: Path,
    make_tree: Callable[[dict[str, bytes | str]], Path],
    fault_tally: Counter[str],
) -> None:
    url = f"s3://{s3_server.new_bucket()}/repo"
    config = tmp_path / "medvault.toml"
    config.write_text(f'[repository.offsite]\nurl = "{url}"\nread_timeout_s = {READ_TIMEOUT_S}\n')
    cli = Cli("offsite", tmp_path)
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli("init")
    data = make_tree(
        {f"notes/{i}.txt": os.urandom(200_000) for i in range(8)}
        | {"scans/ct.dcm": os.urandom(1_500_000), "letters/a.txt": b"Referral.\n" * 20_000}
    )
    segment = write_segment(tmp_path, 1)
    restored = tmp_path / "restored"
    steps = [
        ("backup", str(data), "--json"),
        ("wal-push", "emr", str(segment)),
        ("restore", "latest", "--target", str(restored)),
        ("check", "--read-data"),
        ("wal-fetch", "emr", segment.name, str(tmp_path / "fetched")),
    ]
    with FlakyProxy(s3_server.endpoint, S3_FAULTS[faults]) as proxy:
        cli.env["AWS_ENDPOINT_URL"] = proxy.endpoint
        answers = [cli(*step, check=False) for step in steps]
    for step, done in zip(steps, answers, strict=True):
        assert done.returncode == 0, f"{step[0]} through {faults}: {done.stderr}"
    abandoned = proxy.injected.pop("abandoned by the client", 0)
    assert sum(proxy.injected.values()) >= 5, proxy.injected
    if faults == "answers held past the read timeout":
        # read_timeout_s from medvault.toml: the client gave up on every held answer.
        assert abandoned == proxy.injected[Hold(0).kind], proxy.injected
    for kind, count in proxy.injected.items():
        fault_tally[f"s3:{kind}"] += count

    # Straight to the store now: what was written is whole, and reads back exactly.
    assert tree_digest(restored / str(data).lstrip("/")) == tree_digest(data)
    assert (tmp_path / "fetched").read_bytes() == segment.read_bytes()
    repo = Repository.open(open_backend(url), Credential(passphrase=PASSWORD.encode()))
    try:
        report = check_repository(repo, read_data=True)
        assert report.ok, report.errors
        fault_tally["checks clean"] += 1
        for n, snap in enumerate(repo.list_snapshots()):
            restore_files(repo, snap, str(tmp_path / f"again-{n}"))
            assert tree_digest(tmp_path / f"again-{n}" / str(data).lstrip("/")) == tree_digest(data)
            fault_tally["snapshots restored"] += 1
        assert WalArchive(repo, "emr").fetch(segment.name) == segment.read_bytes()
    finally:
        repo.close()
