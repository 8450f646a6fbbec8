"""Bad input gets one clear line and a documented exit code; nothing is lost."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.pgcluster import PgWorld, free_port, make_pg_tempdir, running_clusters
from tests.test_pg_wal import crafted_segment

from conftest import MEDVAULT, PASSWORD, Cli
from medvault.errors import MedvaultError
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

    def _open(self, dir_fd: int, name: bytes) -> int:
        fd = os.open(name, os.O_WRONLY | os.O_APPEND, dir_fd=dir_fd)
        try:
            os.write(fd, b"late write")
        finally:
            os.close(fd)
        return super()._open(dir_fd, name)


def test_file_changing_while_read_is_reported(repo: Repository, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    growing = data / "growing.log"
    growing.write_bytes(os.urandom(3_000_000))
    result = ConcurrentWriter(repo, BackupOptions("logs", [str(data)])).run()
    assert [p.path for p in result.changed_while_read] == [str(growing)]
    assert not result.complete
    assert result.snapshot.stats["changed_while_read"] == 1


# -- durations ---------------------------------------------------------------------------

ABSURD = "100000000000000000000y"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("[tier.critical]\nfloor = '{value}'", "tier.critical.floor"),
        ("[tier.critical]\nrpo = '{value}'", "tier.critical.rpo"),
        (
            "[tier.critical.retention]\nkeep_within = '{value}'",
            "tier.critical.retention.keep_within",
        ),
        (
            "[source.emr]\nkind = 'postgres'\ndsn = 'host=/tmp'\npitr_window = '{value}'",
            "source.emr.pitr_window",
        ),
    ],
)
def test_absurd_duration_in_the_config_names_the_key_exit_2(
    cli: Cli, tmp_path: Path, section: str, key: str
) -> None:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f"[repository.main]\nurl = '{tmp_path / 'repo'}'\n" + section.format(value=ABSURD)
    )
    done = cli("--config", str(config), "snapshots", env={"MEDVAULT_REPOSITORY": ""}, check=False)
    assert done.returncode == 2, done.stderr
    assert f"{key}: '{ABSURD}' is too long" in done.stderr and one_line(done.stderr)


def test_absurd_keep_count_in_the_config_does_not_overflow(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f"[repository.main]\nurl = '{tmp_path / 'repo'}'\n"
        "[tier.critical]\nfloor = '7y'\n[tier.critical.retention]\n"
        "keep_yearly = 100000000000000000000\n"
    )
    env = {"MEDVAULT_REPOSITORY": ""}
    cli("--config", str(config), "init", env=env)
    done = cli("--config", str(config), "snapshots", env=env, check=False)
    assert done.returncode == 0, done.stderr


def test_absurd_young_is_a_usage_error_naming_the_option(initialized_cli: Cli) -> None:
    done = initialized_cli("prune", "--young", ABSURD, check=False)
    assert done.returncode == 2
    assert f"--young: '{ABSURD}' is too long" in done.stderr and one_line(done.stderr)


# -- restore --include -------------------------------------------------------------------


def test_empty_include_is_a_usage_error_not_the_whole_snapshot(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    initialized_cli("backup", str(make_tree({"a.txt": b"a"})))
    out = tmp_path / "out"
    done = initialized_cli("restore", "latest", "--target", str(out), "--include", "", check=False)
    assert done.returncode == 2
    assert "--include ''" in done.stderr and one_line(done.stderr)
    assert not out.exists()


def test_include_climbing_out_is_a_usage_error_naming_the_option(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    initialized_cli("backup", str(make_tree({"a.txt": b"a"})))
    out = tmp_path / "out"
    done = initialized_cli(
        "restore", "latest", "--target", str(out), "--include", "../../etc", check=False
    )
    assert done.returncode == 2
    assert "--include '../../etc'" in done.stderr and one_line(done.stderr)
    assert "snapshot holds" not in done.stderr
    assert not out.exists()


# -- S3 bucket names ---------------------------------------------------------------------


@pytest.mark.parametrize("bucket", ["Bad_Bucket!", "ab", "a..b", "192.168.1.2", "-dash"])
def test_invalid_bucket_name_is_one_line_exit_2(tmp_path: Path, bucket: str) -> None:
    """AWS's own rules: no endpoint of another store is set (which would widen them)."""
    cli = Cli(f"s3://{bucket}/p", tmp_path)
    cli.env = {k: v for k, v in cli.env.items() if not k.startswith("AWS_ENDPOINT_URL")}
    done = cli("snapshots", check=False)
    assert done.returncode == 2, done.stderr
    assert f"{bucket!r} is not a valid bucket name" in done.stderr and one_line(done.stderr)


# -- init --new-key-file -----------------------------------------------------------------


def test_init_with_new_key_file_over_a_repository_exit_10_and_writes_no_key_file(
    initialized_cli: Cli, tmp_path: Path
) -> None:
    key_file = tmp_path / "new.key"
    done = initialized_cli("init", "--new-key-file", str(key_file), check=False)
    assert done.returncode == 10
    assert "already exists" in done.stderr and one_line(done.stderr)
    assert not key_file.exists()


def test_init_with_new_key_file_into_a_non_empty_directory_leaves_no_key_file(
    cli: Cli, tmp_path: Path
) -> None:
    cli.repo.mkdir()
    (cli.repo / "notes.txt").write_text("not a repository")
    key_file = tmp_path / "new.key"
    done = cli("init", "--new-key-file", str(key_file), check=False)
    assert done.returncode == 10 and one_line(done.stderr)
    assert not key_file.exists()


def test_init_refuses_an_existing_key_file_before_creating_anything(
    cli: Cli, tmp_path: Path
) -> None:
    key_file = tmp_path / "old.key"
    key_file.write_text("precious")
    done = cli("init", "--new-key-file", str(key_file), check=False)
    assert done.returncode == 2 and one_line(done.stderr)
    assert key_file.read_text() == "precious"
    assert not cli.repo.exists()


# -- password commands -------------------------------------------------------------------


def test_password_command_with_an_unbalanced_quote_names_the_option(initialized_cli: Cli) -> None:
    env = {"MEDVAULT_PASSWORD": ""}
    done = initialized_cli("--password-command", "echo 'secret", "snapshots", env=env, check=False)
    assert done.returncode == 2
    assert "--password-command" in done.stderr and "No closing quotation" in done.stderr
    assert "secret" not in done.stderr and one_line(done.stderr)


def test_password_command_in_the_environment_with_an_unbalanced_quote(
    initialized_cli: Cli,
) -> None:
    env = {"MEDVAULT_PASSWORD": "", "MEDVAULT_PASSWORD_COMMAND": 'echo "secret'}
    done = initialized_cli("snapshots", env=env, check=False)
    assert done.returncode == 2
    assert "MEDVAULT_PASSWORD_COMMAND" in done.stderr and one_line(done.stderr)


def test_password_command_in_the_config_with_an_unbalanced_quote_names_the_key(
    cli: Cli, tmp_path: Path
) -> None:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f"[repository.main]\nurl = '{cli.repo}'\npassword_command = \"echo 'secret\"\n"
    )
    done = cli("--config", str(config), "snapshots", env={"MEDVAULT_REPOSITORY": ""}, check=False)
    assert done.returncode == 2
    assert "repository.main.password_command" in done.stderr and one_line(done.stderr)
    assert "secret" not in done.stderr


# -- key slots ---------------------------------------------------------------------------


def _plant_salt(cli: Cli, slot: str, salt: object) -> None:
    path = cli.repo / "keys" / slot
    doc = json.loads(path.read_text())
    doc["kdf"]["salt"] = salt
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("salt", ["!!not base64!!", "c2hvcnQ=", 12345])
def test_key_slot_with_a_bad_salt_is_skipped_with_a_warning(
    initialized_cli: Cli, salt: object
) -> None:
    initialized_cli("key", "add", env={"MEDVAULT_NEW_PASSWORD": "another passphrase"})
    ours = {
        s["id"] for s in json.loads(initialized_cli("key", "list", "--json").stdout) if s["current"]
    }
    (planted,) = set(os.listdir(initialized_cli.repo / "keys")) - ours
    _plant_salt(initialized_cli, planted, salt)
    done = initialized_cli("snapshots", check=False)
    assert done.returncode == 0, done.stderr
    assert f"warning: key slot {planted} is unusable (damaged: kdf salt" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_usable_key_slot_is_one_clear_line_exit_13(initialized_cli: Cli) -> None:
    (slot,) = os.listdir(initialized_cli.repo / "keys")
    _plant_salt(initialized_cli, slot, "!!not base64!!")
    done = initialized_cli("snapshots", check=False)
    assert done.returncode == 13
    assert "no usable key slot" in done.stderr
    assert slot in done.stderr and one_line(done.stderr)


# -- root options after the subcommand ---------------------------------------------------


def test_repo_and_password_file_work_after_the_subcommand(
    cli: Cli, make_tree, tmp_path: Path
) -> None:
    password_file = tmp_path / "pass"
    password_file.write_text(PASSWORD + "\n")
    repo = str(tmp_path / "elsewhere")
    cli.env = {k: v for k, v in cli.env.items() if not k.startswith("MEDVAULT_")}
    options = ("--repo", repo, "--password-file", str(password_file))
    cli("init", *options)
    data = make_tree({"a.txt": b"after the command"})
    cli("backup", *options, str(data))
    assert len(json.loads(cli("snapshots", "--json", *options).stdout)) == 1
    cli("restore", "latest", "--target", str(tmp_path / "out"), f"--repo={repo}", *options[2:])
    assert (tmp_path / "out" / str(data).lstrip("/") / "a.txt").read_bytes() == b"after the command"
    assert json.loads(cli("key", "list", "--json", *options).stdout)[0]["current"]


def test_config_and_key_file_work_after_the_subcommand(cli: Cli, tmp_path: Path) -> None:
    key_file = tmp_path / "repo.key"
    cli.env = {k: v for k, v in cli.env.items() if not k.startswith("MEDVAULT_")}
    cli("init", "-r", str(cli.repo), "--new-key-file", str(key_file))
    config = tmp_path / "etc" / "medvault.toml"
    config.parent.mkdir()
    config.write_text(f"[repository.main]\nurl = '{cli.repo}'\n")
    done = cli("snapshots", "--json", "--config", str(config), "--key-file", str(key_file))
    assert json.loads(done.stdout) == []
    done = cli("check", "-c", str(config), "--key-file", str(key_file), check=False)
    assert done.returncode == 0, done.stderr


def test_root_option_given_before_and_after_with_different_values_is_a_usage_error(
    initialized_cli: Cli, tmp_path: Path
) -> None:
    done = initialized_cli(
        "--repo",
        str(initialized_cli.repo),
        "snapshots",
        "--repo",
        str(tmp_path / "other"),
        check=False,
    )
    assert done.returncode == 2
    assert "--repo is given twice" in done.stderr and one_line(done.stderr)


def test_environment_repository_yields_to_repo_after_the_subcommand(
    initialized_cli: Cli, tmp_path: Path
) -> None:
    env = {"MEDVAULT_REPOSITORY": str(tmp_path / "nothing here")}
    done = initialized_cli("snapshots", "--json", "--repo", str(initialized_cli.repo), env=env)
    assert json.loads(done.stdout) == []


def _imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_wal_push_and_fetch_take_root_options_after_the_command_on_the_fast_path(
    initialized_cli: Cli, tmp_path: Path
) -> None:
    from tests.test_pg_wal import MiB, crafted_segment

    name = "000000010000000000000001"
    segment = tmp_path / "pg_wal" / name
    segment.parent.mkdir()
    segment.write_bytes(crafted_segment(name, 7_000_000_000_000_000_001, 16 * MiB))
    password_file = tmp_path / "pass"
    password_file.write_text(PASSWORD)
    env = {k: v for k, v in initialized_cli.env.items() if not k.startswith("MEDVAULT_")}
    fast = [sys.executable, "-X", "importtime", "-m", "medvault.cli.entry"]
    options = ["--repo", str(initialized_cli.repo), "--password-file", str(password_file)]
    pushed = subprocess.run(
        [*fast, "wal-push", *options, "emr", str(segment)], env=env, capture_output=True, text=True
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "typer" not in _imported_modules(pushed.stderr)
    dest = tmp_path / "restored"
    fetched = subprocess.run(
        [*fast, "wal-fetch", "emr", name, str(dest), *options],
        env=env,
        capture_output=True,
        text=True,
    )
    assert fetched.returncode == 0, fetched.stderr
    assert "typer" not in _imported_modules(fetched.stderr)
    assert dest.read_bytes() == segment.read_bytes()


def test_wal_fetch_with_clashing_options_stops_recovery(
    initialized_cli: Cli, tmp_path: Path
) -> None:
    repo = str(initialized_cli.repo)
    done = initialized_cli(
        "--repo",
        repo,
        "wal-fetch",
        "emr",
        "000000010000000000000001",
        str(tmp_path / "x"),
        "--repo",
        str(tmp_path / "other"),
        check=False,
    )
    assert done.returncode == 126


# -- pitr to a time the archive does not reach --------------------------------------------


def test_pitr_to_now_names_the_newest_moment_the_archive_reaches_before_writing(
    pg_world: PgWorld,
) -> None:
    cluster = pg_world.start_archiving_cluster()
    cluster.execute("CREATE TABLE visits (id int)")
    pg_world.cli("backup", "emr", "--type", "full")
    before = cluster.scalar("SELECT clock_timestamp()")
    cluster.execute("INSERT INTO visits VALUES (1)")
    after = cluster.scalar("SELECT clock_timestamp()")
    cluster.wait_archived(cluster.switch_wal())
    # Just archived, so the segment's arrival says nothing: only its records tell.
    target = pg_world.base / "now"
    now = datetime.now(UTC).isoformat()
    done = pg_world.cli("pitr", "emr", "--target-time", now, "--pgdata", str(target), check=False)
    assert done.returncode == 19, done.stderr
    assert "newest moment the archived WAL of emr reaches" in done.stderr
    assert "--recovery-target latest" in done.stderr and one_line(done.stderr)
    assert not target.exists()
    reached = re.search(r"reaches, (\S+ \S+) \(", done.stderr)
    assert reached is not None
    assert before <= datetime.fromisoformat(reached.group(1)) <= after


def test_pitr_to_a_time_before_the_last_transaction_is_still_reached(
    pg_world: PgWorld,
) -> None:
    cluster = pg_world.start_archiving_cluster()
    cluster.execute("CREATE TABLE visits (id int)")
    pg_world.cli("backup", "emr", "--type", "full")
    cluster.execute("INSERT INTO visits VALUES (1)")
    between = cluster.scalar("SELECT clock_timestamp()")
    cluster.execute("INSERT INTO visits VALUES (2)")
    cluster.wait_archived(cluster.switch_wal())
    restored = pg_world.new_cluster("restored")
    restored.port = free_port()
    pg_world.cli(
        "pitr",
        "emr",
        "--target-time",
        between.isoformat(),
        "--pgdata",
        str(restored.datadir),
        "--start",
        "--port",
        str(restored.port),
    )
    assert restored.scalar("SELECT count(*) FROM visits") == 1


# -- a server that takes the connection and then refuses a query ---------------------------


def test_physical_backup_by_a_role_without_backup_privileges_is_one_line_exit_15(
    pg_world: PgWorld,
) -> None:
    cluster = pg_world.start_archiving_cluster()
    # A role set up for backups that was never granted the backup API itself.
    cluster.execute("CREATE ROLE clerk LOGIN IN ROLE pg_read_all_settings")
    dsn = cluster.dsn.rsplit("user=", 1)[0] + "user=clerk"
    pg_world.write_config(
        f'\n[source.emr_clerk]\nkind = "postgres"\ndsn = "{dsn}"\n'
        f'pgdata = "{cluster.datadir}"\nrepository = "primary"\n'
    )
    done = pg_world.cli("backup", "emr_clerk", "--type", "full", check=False)
    assert done.returncode == 15, done.stderr
    assert done.stderr.startswith("medvault: error: physical backup of source emr_clerk: ")
    assert "permission denied for function pg_backup_start" in done.stderr, done.stderr
    assert one_line(done.stderr)
    assert not list((pg_world.repo / "snapshots").iterdir())


# -- restore --target (a directory) and --recovery-target (immediate, latest) -------------


@pytest.fixture(scope="module")
def physical_backup() -> Iterator[PgWorld]:
    """One archiving cluster with one physical backup, for tests that restore it."""
    base = make_pg_tempdir("medvault-bad-input-")
    with running_clusters() as clusters:
        world = PgWorld(base, clusters)
        world.start_archiving_cluster()
        world.cli("backup", "emr", "--type", "full")
        yield world
    shutil.rmtree(base, ignore_errors=True)


def test_recovery_target_restores_a_physical_snapshot(physical_backup: PgWorld) -> None:
    pgdata = physical_backup.base / "new-spelling"
    done = physical_backup.cli(
        "restore", "latest:emr", "--pgdata", str(pgdata), "--recovery-target", "immediate"
    )
    assert "warning" not in done.stderr
    assert "recovery_target = 'immediate'" in (pgdata / "postgresql.auto.conf").read_text()


def test_old_target_spelling_for_a_physical_snapshot_works_with_a_warning(
    physical_backup: PgWorld,
) -> None:
    pgdata = physical_backup.base / "old-spelling"
    done = physical_backup.cli(
        "restore", "latest:emr", "--pgdata", str(pgdata), "--target", "immediate"
    )
    assert (
        "medvault: warning: --target immediate is spelled --recovery-target immediate now"
        in done.stderr
    )
    assert "recovery_target = 'immediate'" in (pgdata / "postgresql.auto.conf").read_text()


def test_a_directory_as_target_of_a_physical_snapshot_is_a_usage_error(
    physical_backup: PgWorld,
) -> None:
    pgdata = physical_backup.base / "pgdata"
    elsewhere = physical_backup.base / "a-directory"
    done = physical_backup.cli(
        "restore", "latest:emr", "--pgdata", str(pgdata), "--target", str(elsewhere), check=False
    )
    assert done.returncode == 2
    assert "--recovery-target immediate|latest" in done.stderr and one_line(done.stderr)
    assert not pgdata.exists() and not elsewhere.exists()


def test_pitr_takes_recovery_target_latest(physical_backup: PgWorld) -> None:
    pgdata = physical_backup.base / "pitr-latest"
    done = physical_backup.cli(
        "pitr", "emr", "--pgdata", str(pgdata), "--recovery-target", "latest", "--json"
    )
    assert json.loads(done.stdout)["target"]["kind"] == "latest"


def test_recovery_target_for_a_files_snapshot_is_a_usage_error(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    initialized_cli("backup", str(make_tree({"a.txt": b"a"})))
    out = tmp_path / "out"
    done = initialized_cli(
        "restore", "latest", "--target", str(out), "--recovery-target", "latest", check=False
    )
    assert done.returncode == 2
    assert "--recovery-target applies to physical" in done.stderr and one_line(done.stderr)
    assert not out.exists()


# -- optional packages ------------------------------------------------------------------

WITHOUT_BOTO3 = """
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in ("boto3", "botocore"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["medvault", *sys.argv[1:]]
from medvault.cli.entry import main
main()
"""


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["snapshots"], 2),
        (["wal-push", "emr", "000000010000000000000001"], 2),
        (["wal-fetch", "emr", "000000010000000000000001", "dest"], 126),
    ],
    ids=["cli", "wal-push", "wal-fetch"],
)
def test_an_s3_repository_without_boto3_installed_names_the_package_and_how_to_install_it(
    tmp_path: Path, args: list[str], code: int
) -> None:
    (tmp_path / "000000010000000000000001").write_bytes(b"\0" * 1024)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_BOTO3, "--repo", "s3://clinic-backups/emr", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env | {"MEDVAULT_PASSWORD": PASSWORD},
    )
    assert done.returncode == code, done.stderr
    assert "boto3" in done.stderr and "pip install boto3" in done.stderr, done.stderr
    assert one_line(done.stderr) and "internal error" not in done.stderr


# -- the exit-code table -----------------------------------------------------------------


def _error_classes() -> list[type[MedvaultError]]:
    found, pending = [], [MedvaultError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending += cls.__subclasses__()
    return found


def test_every_exception_class_lives_in_errors_py() -> None:
    """One place to read every error a shell can meet (and the exit-code table checks them
    all only if they are all there)."""
    import ast
    import builtins

    root = Path(__file__).parent.parent / "src" / "medvault"
    from medvault import errors

    exception_names = {
        name
        for name, value in {**vars(builtins), **vars(errors)}.items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    elsewhere = []
    for path in root.rglob("*.py"):
        if path.name == "errors.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {
                    b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
                }
                if bases & exception_names:
                    elsewhere.append(f"{path.relative_to(root)}: {node.name}")
    assert not elsewhere


def _exit_code_rows() -> dict[int, str]:
    guide = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    section = guide.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows: dict[int, str] = {}
    for line in section.splitlines():
        match = re.match(r"\| (\d+) \|", line)
        if match:
            rows[int(match.group(1))] = rows.get(int(match.group(1)), "") + line
    return rows


def test_operations_guide_lists_every_exit_code_with_its_class() -> None:
    from medvault import errors

    rows = _exit_code_rows()
    for cls in _error_classes():
        assert cls.exit_code in rows, f"exit {cls.exit_code} ({cls.__name__}) is not documented"
        assert f"`{cls.__name__}`" in rows[cls.exit_code], cls.__name__
    set_by_commands = {getattr(errors, name) for name in dir(errors) if name.startswith("EXIT_")}
    assert set_by_commands <= set(rows)


def test_exit_code_for_gives_each_class_its_code_and_wal_fetch_126_for_any_error() -> None:
    from medvault import errors

    for cls in _error_classes():
        error = cls.__new__(cls)  # some take more than a message
        assert errors.exit_code_for(error) == cls.exit_code, cls.__name__
        assert errors.exit_code_for(error, wal_fetch=True) == 126, cls.__name__
    assert errors.exit_code_for(RuntimeError("a bug")) == 1
    assert errors.exit_code_for(RuntimeError("a bug"), wal_fetch=True) == 126
    assert errors.exit_code_for(BrokenPipeError()) == 141
    assert errors.exit_code_for(KeyboardInterrupt()) == 130


def test_a_terminated_backup_ends_by_its_signal_as_documented_and_commits_nothing(
    initialized_cli: Cli, tmp_path: Path
) -> None:
    """docs/operations.md: 143 (SIGTERM) is the shell's 128 + 15, since medvault sets no
    handler; an earlier snapshot stays, and nothing of the terminated run is committed."""
    from tests.faultpoints import Pause, faults_env

    data = tmp_path / "data"
    data.mkdir()
    (data / "note.txt").write_text("first\n")
    initialized_cli("backup", str(data))
    (data / "note.txt").write_text("second\n")
    pause = Pause(tmp_path / "pause", "snapshot.before-store")
    proc = initialized_cli.popen("backup", str(data), env=faults_env(**{pause.name: pause.action}))
    pause.wait(proc)
    proc.terminate()
    proc.communicate(timeout=60)
    assert proc.returncode == -15
    assert 128 + 15 in _exit_code_rows()
    assert len(initialized_cli.objects("snapshots")) == 1


# -- secrets in DSNs, repository groups ---------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db dbname=emr user=backup password=hunter2",
        "host=db password='hunter2' dbname=emr",
        "postgresql://backup:hunter2@db/emr",
        "postgresql://backup@db/emr?password=hunter2",
        "postgresql://backup@db/emr?sslmode=require&password=hunter2",
    ],
)
def test_a_dsn_holding_a_password_in_any_form_is_refused_exit_2(
    cli: Cli, tmp_path: Path, dsn: str
) -> None:
    """pg_dump, pg_restore and pg_basebackup get the dsn on their command line, which `ps`
    shows any local user."""
    (tmp_path / "medvault.toml").write_text(
        f'[repository.primary]\nurl = "/x"\n[source.emr]\nkind = "postgres"\ndsn = "{dsn}"\n'
    )
    done = cli("snapshots", env={"MEDVAULT_REPOSITORY": ""}, check=False)
    assert done.returncode == 2, done.stderr
    assert "source.emr: dsn: holds a password" in done.stderr and ".pgpass" in done.stderr
    assert "hunter2" not in done.stderr and one_line(done.stderr)


def test_init_with_an_unknown_group_exit_2_and_nothing_created(cli: Cli) -> None:
    done = cli("init", "--group", "no-such-group-here", check=False)
    assert done.returncode == 2
    assert "no-such-group-here" in done.stderr and one_line(done.stderr)
    assert not cli.repo.exists()
