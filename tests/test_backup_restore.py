"""Backing up and restoring files through the `medvault` command."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from conftest import MEDVAULT, Cli, tree_digest

BACKENDS = ("local", "s3")


def restored(target: Path, source: Path) -> Path:
    """Snapshots mirror absolute paths: /x/data restores to target/x/data."""
    return target / str(source).lstrip("/")


def backup_json(cli: Cli, *args: str) -> dict[str, object]:
    return json.loads(cli("backup", *args, "--json").stdout)


def test_restore_is_byte_identical_with_modes_mtimes_and_symlinks(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    data = make_tree(
        {
            "letters/referral.txt": b"Dear colleague,\n" * 1000,
            "scans/ct-0001.dcm": os.urandom(3_000_000),
            "empty.txt": b"",
            "nested/deeper/still/note.md": b"# note\n",
            "latest-scan": "scans/ct-0001.dcm",
            "dangling": "does/not/exist",
        }
    )
    (data / "letters/referral.txt").chmod(0o640)
    (data / "nested").chmod(0o750)
    os.utime(data / "empty.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    initialized_cli("backup", str(data))
    initialized_cli("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_digest(restored(tmp_path / "out", data)) == tree_digest(data)


def test_names_that_are_not_utf8_survive_a_round_trip(initialized_cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    name = b"patient-\xe9\xff.txt"
    with open(os.path.join(os.fsencode(data), name), "wb") as handle:
        handle.write(b"latin-1 named file")
    initialized_cli("backup", str(data))
    listing = initialized_cli("ls", "latest", "--json").stdout
    assert "patient-\\\\xe9\\\\xff.txt" in listing
    initialized_cli("restore", "latest", "--target", str(tmp_path / "out"))
    out = os.fsencode(restored(tmp_path / "out", data))
    assert Path(os.fsdecode(os.path.join(out, name))).read_bytes() == b"latin-1 named file"


def test_second_backup_of_unchanged_files_adds_nothing(initialized_cli: Cli, make_tree) -> None:
    data = make_tree({f"f{i}.bin": os.urandom(200_000) for i in range(5)})
    first = backup_json(initialized_cli, str(data))
    second = backup_json(initialized_cli, str(data), "--type", "full")
    assert first["bytes_added"] > 1_000_000
    assert second["bytes_added"] < 4096  # only the tree blobs, if any changed
    assert second["files_new"] == 5  # full reads everything...
    assert second["bytes_read"] == first["bytes_read"]  # ...and finds it all stored


def test_duplicate_content_within_one_backup_is_stored_once(
    initialized_cli: Cli, make_tree
) -> None:
    blob = os.urandom(2_000_000)
    data = make_tree({"a.bin": blob, "copy/b.bin": blob, "copy/c.bin": blob})
    result = backup_json(initialized_cli, str(data))
    assert result["bytes_read"] == 6_000_000
    assert result["bytes_added"] < 2_200_000


def test_incremental_skips_unchanged_files_by_metadata(initialized_cli: Cli, make_tree) -> None:
    data = make_tree({"old.bin": os.urandom(100_000), "changing.txt": b"v1"})
    old_time = 1_700_000_000_000_000_000
    for name in ("old.bin", "changing.txt"):
        os.utime(data / name, ns=(old_time, old_time))
    backup_json(initialized_cli, str(data))
    (data / "changing.txt").write_bytes(b"version two")
    (data / "new.txt").write_bytes(b"fresh")
    result = backup_json(initialized_cli, str(data))
    assert result["type"] == "incremental"
    assert (result["files_unchanged"], result["files_changed"], result["files_new"]) == (1, 1, 1)
    assert result["bytes_read"] == len(b"version two") + len(b"fresh")


def test_files_touched_near_the_parent_start_are_reread(initialized_cli: Cli, make_tree) -> None:
    data = make_tree({"racy.txt": b"written just now"})
    # An mtime at or after the parent's start cannot prove the file was not written again
    # later in the same clock tick; a future one is the deterministic form of that case.
    future = time.time_ns() + 5_000_000_000
    os.utime(data / "racy.txt", ns=(future, future))
    backup_json(initialized_cli, str(data))
    result = backup_json(initialized_cli, str(data))
    assert result["files_unchanged"] == 0
    assert result["files_changed"] == 1


def test_differential_takes_the_last_full_as_parent(initialized_cli: Cli, make_tree) -> None:
    data = make_tree({"a.txt": b"a"})
    full = backup_json(initialized_cli, str(data), "--type", "full")
    incremental = backup_json(initialized_cli, str(data))
    differential = backup_json(initialized_cli, str(data), "--type", "differential")
    assert full["type"] == "full" and full["parent"] is None
    assert incremental["parent"] == full["snapshot"]
    assert differential["parent"] == full["snapshot"]
    assert differential["type"] == "differential"


def test_exclude_globs_leave_matching_names_out(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    data = make_tree({"keep.pdf": b"k", "cache/x.tmp": b"t", "sub/y.tmp": b"t", "sub/z": b"z"})
    initialized_cli("backup", str(data), "--exclude", "*.tmp")
    paths = [e["path"] for e in json.loads(initialized_cli("ls", "latest", "--json").stdout)]
    assert not any(p.endswith(".tmp") for p in paths)
    assert any(p.endswith("/sub/z") for p in paths)


def test_restore_of_one_path_restores_only_that_path(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    data = make_tree({"a/one.txt": b"1", "b/two.txt": b"2"})
    initialized_cli("backup", str(data))
    initialized_cli(
        "restore", "latest", "--target", str(tmp_path / "out"), "--include", f"{data}/b"
    )
    out = restored(tmp_path / "out", data)
    assert (out / "b/two.txt").read_bytes() == b"2"
    assert not (out / "a").exists()


def test_restore_over_existing_files_needs_overwrite(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    data = make_tree({"chart.txt": b"from backup"})
    initialized_cli("backup", str(data))
    out = restored(tmp_path / "out", data)
    out.mkdir(parents=True)
    (out / "chart.txt").write_bytes(b"local edit")
    refused = initialized_cli("restore", "latest", "--target", str(tmp_path / "out"), check=False)
    assert refused.returncode == 16
    assert "--overwrite" in refused.stderr
    assert (out / "chart.txt").read_bytes() == b"local edit"
    initialized_cli("restore", "latest", "--target", str(tmp_path / "out"), "--overwrite")
    assert (out / "chart.txt").read_bytes() == b"from backup"


def test_restore_with_overwrite_removes_the_files_a_killed_restore_left_unfinished(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    """A restore killed outright leaves the files it was writing under temporary names,
    partial copies; run again with --overwrite, the restore removes them. Other hidden files
    stay."""
    data = make_tree({"letters/referral.txt": b"Dear colleague", "b.txt": b"b"})
    initialized_cli("backup", str(data))
    out = restored(tmp_path / "out", data)
    (out / "letters").mkdir(parents=True)
    (out / "letters/.medvault-restore-0123456789ab").write_bytes(b"Dear coll")
    (out / ".medvault-restore-notes").write_bytes(b"not a restore's")
    initialized_cli("restore", "latest", "--target", str(tmp_path / "out"), "--overwrite")
    assert [p.name for p in (out / "letters").iterdir()] == ["referral.txt"]
    assert (out / ".medvault-restore-notes").read_bytes() == b"not a restore's"


def test_snapshots_ls_and_diff_describe_the_history(initialized_cli: Cli, make_tree) -> None:
    data = make_tree({"keep.txt": b"same", "edit.txt": b"v1", "gone.txt": b"bye"})
    first = backup_json(initialized_cli, str(data))
    (data / "edit.txt").write_bytes(b"v2 longer")
    (data / "gone.txt").unlink()
    (data / "added.txt").write_bytes(b"new")
    second = backup_json(initialized_cli, str(data))
    listed = json.loads(initialized_cli("snapshots", "--json").stdout)
    assert [s["id"] for s in listed] == [first["snapshot"], second["snapshot"]]
    diff = json.loads(
        initialized_cli("diff", str(first["snapshot"])[:8], "latest", "--json").stdout
    )
    changes = {(d["change"], d["path"].rsplit("/", 1)[1]) for d in diff}
    assert ("M", "edit.txt") in changes
    assert ("-", "gone.txt") in changes
    assert ("+", "added.txt") in changes
    assert not any(name == "keep.txt" for _, name in changes)
    text = initialized_cli("ls", "latest", f"{data}/edit.txt").stdout
    assert "edit.txt" in text and "9" in text


def test_summary_line_reports_counts_bytes_and_duration(initialized_cli: Cli, make_tree) -> None:
    data = make_tree({"a.txt": b"hello"})
    out = initialized_cli("backup", str(data)).stdout.strip()
    assert out.startswith("snapshot ")
    assert "files 1 new, 0 changed, 0 unchanged" in out
    assert "read 5 B" in out and "added" in out and " s" in out


def test_latest_of_a_source_picks_that_source(initialized_cli: Cli, make_tree) -> None:
    a = make_tree({"x": b"1"}, root=Path(initialized_cli.cwd) / "a")
    b = make_tree({"y": b"2"}, root=Path(initialized_cli.cwd) / "b")
    first = backup_json(initialized_cli, str(a), "--source", "alpha")
    backup_json(initialized_cli, str(b), "--source", "beta")
    listing = json.loads(initialized_cli("ls", "latest:alpha", "--json").stdout)
    assert any(e["path"].endswith("/a/x") for e in listing)
    shown = json.loads(initialized_cli("snapshots", "--source", "alpha", "--json").stdout)
    assert [s["id"] for s in shown] == [first["snapshot"]]


def test_path_below_a_symlinked_directory_restores(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    real = make_tree({"a/chart.txt": b"through the link"}, root=tmp_path / "real")
    (tmp_path / "via").symlink_to(real)
    initialized_cli("backup", str(tmp_path / "via" / "a"))
    initialized_cli("check")
    initialized_cli("restore", "latest", "--target", str(tmp_path / "out"))
    restored_file = tmp_path / "out" / str(tmp_path / "via").lstrip("/") / "a" / "chart.txt"
    assert restored_file.read_bytes() == b"through the link"


def test_restore_of_many_directories_within_a_small_descriptor_limit(
    initialized_cli: Cli, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    for i in range(300):
        folder = data / f"patient-{i:03d}" / "visits"
        folder.mkdir(parents=True)
        (folder / "note.txt").write_bytes(b"note %d" % i)
    initialized_cli("backup", str(data))
    restore = subprocess.run(
        [
            "prlimit",
            "--nofile=64:64",
            MEDVAULT,
            "restore",
            "latest",
            "--target",
            str(tmp_path / "out"),
        ],
        env=initialized_cli.env,
        capture_output=True,
        text=True,
    )
    assert restore.returncode == 0, restore.stderr
    assert tree_digest(restored(tmp_path / "out", data)) == tree_digest(data)


def test_owners_are_restored_when_running_as_root(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    assert os.geteuid() == 0, "the suite runs as root (PostgreSQL tests need it too)"
    data = make_tree({"ward/chart.txt": b"owned by the EMR service", "ward/link": "chart.txt"})
    os.chown(data / "ward/chart.txt", 1234, 5678)
    os.chown(data / "ward", 4321, 8765)
    os.lchown(data / "ward/link", 1111, 2222)
    initialized_cli("backup", str(data))
    initialized_cli("restore", "latest", "--target", str(tmp_path / "out"))
    out = restored(tmp_path / "out", data)
    chart, ward, link = (
        (out / "ward/chart.txt").stat(),
        (out / "ward").stat(),
        (out / "ward/link").lstat(),
    )
    assert (chart.st_uid, chart.st_gid) == (1234, 5678)
    assert (ward.st_uid, ward.st_gid) == (4321, 8765)
    assert (link.st_uid, link.st_gid) == (1111, 2222)


def test_a_repository_inside_the_backed_up_tree_is_left_out(make_tree, tmp_path: Path) -> None:
    data = make_tree({"chart.txt": b"kept"})
    cli = Cli(data / "backups" / "repo", tmp_path)
    cli("init")
    cli("backup", str(data))
    paths = [e["path"] for e in json.loads(cli("ls", "latest", "--json").stdout)]
    assert any(p.endswith("/chart.txt") for p in paths)
    assert any(p.endswith("/backups") for p in paths)
    assert not any("/backups/repo" in p for p in paths)
