"""Key material stays where it belongs: out of reprs and core files, in private files and
private repository directories (or ones shared with a named group on purpose)."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import resource
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pgcluster import PG_USER

from conftest import PASSWORD, Cli
from medvault.backends import open_backend
from medvault.backends.s3 import S3Options
from medvault.config import RepositorySettings, Settings
from medvault.repository.crypto import DataKey
from medvault.repository.keys import Credential, KeySlot, MasterKey


def test_master_and_data_keys_never_print_their_bytes() -> None:
    master = MasterKey.generate()
    shown = repr(master) + str(master) + repr(master.current)
    for secret in (master.id_key, master.mac_key, master.current.key):
        assert repr(secret) not in shown and secret.hex() not in shown
    assert str(master.chunker_seed) not in shown
    data_key = DataKey.generate()
    assert repr(data_key.key) not in repr(data_key)


def test_a_key_slot_and_a_credential_never_print_secrets() -> None:
    master = MasterKey.generate()
    secret = os.urandom(32)
    slot = KeySlot.create(master, Credential(keyfile_secret=secret))
    shown = repr(slot)
    assert repr(slot.wrapped) not in shown and repr(slot.nonce) not in shown
    assert slot.slot_id in shown
    credential = Credential(passphrase=b"hunter2", keyfile_secret=secret, origin="env")
    assert "hunter2" not in repr(credential) and repr(secret) not in repr(credential)


def test_s3_options_and_settings_never_print_the_secret_key() -> None:
    options = S3Options(access_key_id="AKIAEXAMPLE", secret_access_key="s3cr3t-key-material")
    assert "s3cr3t-key-material" not in repr(options)
    section = RepositorySettings(
        url="s3://bucket/emr",
        access_key_id="AKIAEXAMPLE",
        secret_access_key="s3cr3t-key-material",
        plaintext_credentials=True,
    )
    settings = Settings(repository={"offsite": section})
    for shown in (repr(section), str(section), repr(settings), str(settings)):
        assert "s3cr3t-key-material" not in shown


# -- core dumps ------------------------------------------------------------------------------

LIMITS_RECORDER = """#!/bin/sh
# The passphrase for medvault, after saving the limits medvault (our parent) runs under.
cat /proc/$PPID/limits > {limits}
echo '{passphrase}'
"""


def core_limits(limits: Path) -> tuple[str, str]:
    (line,) = [row for row in limits.read_text().splitlines() if "core file size" in row]
    soft, hard = line.split()[4:6]
    return soft, hard


@pytest.fixture
def limits_command(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A password command recording medvault's limits; medvault starts with core dumps
    allowed as far as this host permits (they must be medvault's own doing when off)."""
    limits = tmp_path / "limits"
    command = tmp_path / "passphrase"
    command.write_text(LIMITS_RECORDER.format(limits=limits, passphrase=PASSWORD))
    command.chmod(0o700)
    before = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (before[1], before[1]))
    try:
        yield command, limits
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, before)


def test_the_cli_runs_without_core_dumps(
    initialized_cli: Cli, limits_command: tuple[Path, Path]
) -> None:
    command, limits = limits_command
    initialized_cli("--password-command", str(command), "snapshots")
    assert core_limits(limits) == ("0", "0")


def test_wal_fetch_runs_without_core_dumps(
    initialized_cli: Cli, limits_command: tuple[Path, Path], tmp_path: Path
) -> None:
    """wal-fetch and wal-push take the fast path, without Typer."""
    command, limits = limits_command
    done = initialized_cli(
        "--password-command",
        str(command),
        "wal-fetch",
        "emr",
        "000000010000000000000001",
        str(tmp_path / "segment"),
        check=False,
    )
    assert done.returncode == 1, done.stderr  # not archived: the repository was opened
    assert core_limits(limits) == ("0", "0")


# -- secret files open to others ---------------------------------------------------------------


def test_a_password_file_others_can_read_is_used_with_a_warning(
    initialized_cli: Cli, tmp_path: Path
) -> None:
    password_file = tmp_path / "pass"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o644)
    done = initialized_cli("--password-file", str(password_file), "snapshots")
    (warning,) = done.stderr.strip().splitlines()
    assert warning.startswith("medvault: warning: password file")
    assert str(password_file) in warning and "0644" in warning and "chmod 600" in warning


def test_a_key_file_the_group_can_read_is_used_with_a_warning(cli: Cli, tmp_path: Path) -> None:
    key_file = tmp_path / "repo.key"
    cli("init", "--new-key-file", str(key_file))
    key_file.chmod(0o640)
    done = cli("--key-file", str(key_file), "snapshots")
    (warning,) = done.stderr.strip().splitlines()
    assert warning.startswith("medvault: warning: key file") and "0640" in warning


def test_private_secret_files_get_no_warning(cli: Cli, tmp_path: Path) -> None:
    key_file = tmp_path / "repo.key"
    cli("init", "--new-key-file", str(key_file))
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert cli("--key-file", str(key_file), "snapshots").stderr == ""


# -- repository permissions ------------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """For the medvault processes started inside: the modes must not depend on it."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> tuple[set[int], set[int], set[int]]:
    """The permission bits of the directories and files under root, and their groups."""
    dirs, files, groups = {stat.S_IMODE(root.stat().st_mode)}, set(), {root.stat().st_gid}
    for path in root.rglob("*"):
        st = path.lstat()
        (dirs if path.is_dir() else files).add(stat.S_IMODE(st.st_mode))
        groups.add(st.st_gid)
    return dirs, files, groups


def test_a_local_repository_is_its_owners_alone(cli: Cli, make_tree) -> None:
    with umask(0):  # the most permissive umask: medvault must not rely on a careful one
        cli("init")
        cli("backup", str(make_tree({"letter.txt": b"Dear colleague\n" * 100})))
    with open_backend(cli.url) as backend:  # a later writer, in a folder not made yet
        backend.store("wal/emr/00000001/000000010000000000000001", b"segment")
    dirs, files, _ = modes(cli.repo)
    assert dirs == {0o700}
    assert files == {0o600}
    assert len(list(cli.repo.rglob("*"))) > 256


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A directory anyone may pass through, so that only the repository's modes decide."""
    parent = Path(tempfile.mkdtemp(prefix="medvault-group-"))
    parent.chmod(0o711)
    yield parent
    shutil.rmtree(parent)


def read_as(user: str, path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["runuser", "-u", user, "--", "cat", str(path)], capture_output=True)


def test_a_repository_opened_to_a_group_lets_its_members_read(
    open_parent: Path, tmp_path: Path, make_tree
) -> None:
    gid = grp.getgrnam(PG_USER).gr_gid
    assert pwd.getpwnam(PG_USER).pw_gid == gid, "the postgres account is in its group"
    cli = Cli(open_parent / "repo", tmp_path)
    with umask(0o077):  # the strictest umask: the group must still be able to read
        cli("init", "--group", PG_USER)
        cli("backup", str(make_tree({"letter.txt": b"Dear colleague\n" * 100})))
    with open_backend(cli.url) as backend:
        backend.store("wal/emr/00000001/000000010000000000000001", b"segment")
    dirs, files, groups = modes(cli.repo)
    assert dirs == {0o2750} and files == {0o640} and groups == {gid}
    snapshot = next((cli.repo / "snapshots").iterdir())
    assert read_as(PG_USER, snapshot).returncode == 0, "a member of the group reads it"
    refused = read_as("nobody", snapshot)
    assert refused.returncode != 0 and b"Permission denied" in refused.stderr
