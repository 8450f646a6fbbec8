"""Bad input gets one clear line and a documented exit code; nothing is lost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import MEDVAULT, PASSWORD, Cli
from medvault.repository.repo import Repository
from medvault.sources.files import BackupOptions, FileBackup


def one_line(text: str) -> bool:
    return text.strip().count("\n") == 0 and "Traceback" not in text


def test_missing_repository_exit_10(cli: Cli) -> None:
    done = cli("snapshots", check=False)
    assert done.returncode == 10
    assert "no medvault repository" in done.stderr and one_line(done.stderr)


def test_path_that_does_not_exist_exit_15_and_nothing_written(initialized_cli: Cli) -> None:
    done = initialized_cli("backup", "/no/such/place", check=False)
    assert done.returncode == 15
    assert "/no/such/place does not exist" in done.stderr and one_line(done.stderr)
    assert list((initialized_cli.repo / "snapshots").iterdir()) == []


def test_unknown_format_version_exit_14(initialized_cli: Cli) -> None:
    config = initialized_cli.repo / "config"
    doc = json.loads(config.read_text())
    doc["version"] = 7
    config.write_text(json.dumps(doc))
    done = initialized_cli("snapshots", check=False)
    assert done.returncode == 14
    assert "format version 7" in done.stderr and one_line(done.stderr)


def test_config_with_an_infinite_compression_level_exit_13(initialized_cli: Cli) -> None:
    config = initialized_cli.repo / "config"
    doc = json.loads(config.read_text())
    doc["compression"]["level"] = float("inf")  # json writes Infinity, and reads it back
    config.write_text(json.dumps(doc))
    done = initialized_cli("snapshots", check=False)
    assert done.returncode == 13
    assert "compression level inf is out of range" in done.stderr and one_line(done.stderr)


def test_altered_config_is_detected(initialized_cli: Cli) -> None:
    config = initialized_cli.repo / "config"
    doc = json.loads(config.read_text())
    doc["pack_size"] = 1024
    config.write_text(json.dumps(doc))
    done = initialized_cli("snapshots", check=False)
    assert done.returncode == 13
    assert "altered" in done.stderr


def test_unknown_snapshot_exit_4(initialized_cli: Cli) -> None:
    done = initialized_cli("ls", "abcdef12", check=False)
    assert done.returncode == 4
    assert one_line(done.stderr)


def test_bad_backup_type_is_a_usage_error(initialized_cli: Cli, make_tree) -> None:
    done = initialized_cli("backup", str(make_tree({"a": b"a"})), "--type", "weekly", check=False)
    assert done.returncode == 2
    assert "--type" in done.stderr


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A real 2 MiB file system, so that ENOSPC comes from the kernel."""
    mount_point = Path(tempfile.mkdtemp(prefix="medvault-full-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.fail(f"this test needs root to mount a tmpfs: {done.stderr!r}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
        mount_point.rmdir()


def test_disk_full_during_restore_exit_17_without_half_files(
    initialized_cli: Cli, make_tree, small_disk: Path
) -> None:
    data = make_tree({"small.txt": b"fits", "big.bin": os.urandom(5_000_000)})
    initialized_cli("backup", str(data))
    done = initialized_cli("restore", "latest", "--target", str(small_disk), check=False)
    assert done.returncode == 17
    assert "no space left" in done.stderr and one_line(done.stderr)
    leftovers = [p.name for p in small_disk.rglob("*") if p.is_file()]
    assert "big.bin" not in leftovers
    assert not any(name.startswith(".medvault-restore-") for name in leftovers)


def test_disk_full_in_the_repository_keeps_earlier_snapshots(
    cli: Cli, make_tree, small_disk: Path, tmp_path: Path
) -> None:
    cli.env["MEDVAULT_REPOSITORY"] = str(small_disk / "repo")
    cli("init")
    first = make_tree({"a.txt": b"first backup"}, root=tmp_path / "first")
    cli("backup", str(first))
    second = make_tree({"big.bin": os.urandom(4_000_000)}, root=tmp_path / "second")
    done = cli("backup", str(second), check=False)
    assert done.returncode != 0 and one_line(done.stderr)
    assert "full" in done.stderr
    snapshots = json.loads(cli("snapshots", "--json").stdout)
    assert len(snapshots) == 1
    cli("restore", "latest", "--target", str(tmp_path / "out"))
    assert (tmp_path / "out" / str(first).lstrip("/") / "a.txt").read_bytes() == b"first backup"


def test_unreadable_file_is_named_counted_and_exit_3(tmp_path: Path) -> None:
    """Run as an unprivileged user, for whom a mode-000 file really is unreadable."""
    work = Path(tempfile.mkdtemp(prefix="medvault-unreadable-"))
    try:
        work.chmod(0o777)
        data = work / "data"
        data.mkdir()
        (data / "ok.txt").write_bytes(b"fine")
        secret = data / "locked.txt"
        secret.write_bytes(b"no")
        secret.chmod(0)
        for path in (data, data / "ok.txt"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        env = {
            "MEDVAULT_PASSWORD": PASSWORD,
            "MEDVAULT_REPOSITORY": str(work / "repo"),
            "PATH": os.environ["PATH"],
            "HOME": str(work),
        }
        run = ["runuser", "-u", "nobody", "--", "env", *[f"{k}={v}" for k, v in env.items()]]
        subprocess.run([*run, MEDVAULT, "init"], check=True, capture_output=True, cwd=work)
        done = subprocess.run(
            [*run, MEDVAULT, "backup", str(data), "--json"],
            capture_output=True,
            text=True,
            cwd=work,
        )
        assert done.returncode == 3, done.stderr
        result = json.loads(done.stdout)
        assert [p["path"] for p in result["unreadable"]] == [str(secret)]
        assert result["files_new"] == 1
        human = subprocess.run(
            [*run, MEDVAULT, "backup", str(data)], capture_output=True, text=True, cwd=work
        )
        assert f"could not read {secret}" in human.stderr
    finally:
        shutil.rmtree(work)


class ConcurrentWriter(FileBackup):
    """A writer appends to every file just as the backup opens it, after the directory scan."""

    def _open(self, path: bytes) -> int:
        with open(path, "ab") as handle:
            handle.write(b"late write")
        return super()._open(path)


def test_file_changing_while_read_is_reported(repo: Repository, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    growing = data / "growing.log"
    growing.write_bytes(os.urandom(3_000_000))
    result = ConcurrentWriter(repo, BackupOptions("logs", [str(data)])).run()
    assert [p.path for p in result.changed_while_read] == [str(growing)]
    assert not result.complete
    assert result.snapshot.stats["changed_while_read"] == 1
