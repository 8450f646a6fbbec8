"""Bad input gets one clear line and a documented exit code; nothing is lost."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.test_pg_wal import crafted_segment

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


def fill(disk: Path, leave: int = 0) -> Path:
    """A ballast file taking all the space of `disk` but `leave` bytes (about: tmpfs counts
    in pages)."""
    ballast = disk / "ballast"
    st = os.statvfs(disk)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    with open(ballast, "wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * size)
    return ballast


def test_disk_full_during_restore_exit_17_without_half_files(
    initialized_cli: Cli, make_tree, small_disk: Path, fault_tally: Counter[str]
) -> None:
    data = make_tree(
        {
            "letters/a.txt": b"Referral.\n" * 10_000,
            "letters/b.txt": os.urandom(300_000),
            "scans/z-big.bin": os.urandom(5_000_000),
        }
    )
    initialized_cli("backup", str(data))
    done = initialized_cli("restore", "latest", "--target", str(small_disk), check=False)
    assert done.returncode == 17
    assert "no space left" in done.stderr and one_line(done.stderr)
    fault_tally["disk full: restore target"] += 1
    restored = small_disk / str(data).lstrip("/")
    present = [p for p in small_disk.rglob("*") if p.is_file()]
    assert not any(p.name.startswith(".medvault-restore-") for p in present)
    assert restored / "scans" / "z-big.bin" not in present
    for path in present:  # whatever has its real name is whole
        assert path.read_bytes() == (data / path.relative_to(restored)).read_bytes()


def test_wal_fetch_to_a_full_disk_exits_126_without_a_half_segment(
    initialized_cli: Cli, small_disk: Path, tmp_path: Path, fault_tally: Counter[str]
) -> None:
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(crafted_segment(segment.name, 7_000_000_000_000_000_001, 1024 * 1024))
    initialized_cli("wal-push", "emr", str(segment))
    fill(small_disk, leave=64 * 1024)
    done = initialized_cli(
        "wal-fetch", "emr", segment.name, str(small_disk / segment.name), check=False
    )
    assert done.returncode == 126 and one_line(done.stderr)
    assert "No space left" in done.stderr or "no space left" in done.stderr
    fault_tally["disk full: restore target"] += 1
    assert [p.name for p in small_disk.iterdir()] == ["ballast"]


def test_disk_full_in_the_repository_fails_cleanly_and_the_next_backup_works(
    cli: Cli, make_tree, small_disk: Path, tmp_path: Path, fault_tally: Counter[str]
) -> None:
    repo = small_disk / "repo"
    cli.env["MEDVAULT_REPOSITORY"] = str(repo)
    cli("init")
    first = make_tree({"a.txt": b"first backup"}, root=tmp_path / "first")
    cli("backup", str(first))
    ballast = fill(small_disk, leave=600_000)
    second = make_tree({"scan.bin": os.urandom(1_000_000)}, root=tmp_path / "second")
    done = cli("backup", str(second), check=False)
    assert done.returncode == 5 and one_line(done.stderr)
    assert f"repository disk {repo} is full" in done.stderr
    fault_tally["disk full: repository"] += 1
    # Nothing half-written is visible: no temporary file stays, every object is whole.
    assert [p for p in repo.rglob(".tmp-*")] == []
    assert len(json.loads(cli("snapshots", "--json").stdout)) == 1
    cli("check", "--read-data")
    fault_tally["checks clean"] += 1
    cli("restore", "latest", "--target", str(tmp_path / "out"))
    assert (tmp_path / "out" / str(first).lstrip("/") / "a.txt").read_bytes() == b"first backup"
    fault_tally["snapshots restored"] += 1
    # Space freed: the same backup goes through, and restores.
    ballast.unlink()
    cli("backup", str(second))
    cli("restore", "latest", "--target", str(tmp_path / "again"))
    again = tmp_path / "again" / str(second).lstrip("/") / "scan.bin"
    assert again.read_bytes() == (second / "scan.bin").read_bytes()
    fault_tally["snapshots restored"] += 1


def test_wal_push_to_a_full_repository_fails_cleanly_and_succeeds_once_space_is_freed(
    cli: Cli, small_disk: Path, tmp_path: Path, fault_tally: Counter[str]
) -> None:
    cli.env["MEDVAULT_REPOSITORY"] = str(small_disk / "repo")
    cli("init")
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(crafted_segment(segment.name, 7_000_000_000_000_000_001, 1024 * 1024))
    ballast = fill(small_disk)
    done = cli("wal-push", "emr", str(segment), check=False)
    assert done.returncode == 5 and one_line(done.stderr) and "is full" in done.stderr
    fault_tally["disk full: repository"] += 1
    assert cli.objects("wal/emr/00000001") == []
    assert [p for p in (small_disk / "repo").rglob(".tmp-*")] == []
    ballast.unlink()
    cli("wal-push", "emr", str(segment))
    cli("wal-fetch", "emr", segment.name, str(tmp_path / "fetched"))
    assert (tmp_path / "fetched").read_bytes() == segment.read_bytes()


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
