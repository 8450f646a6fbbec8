"""Hostile snapshots and hostile targets cannot make a restore write outside its target."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import PASSWORD, Cli, reopen
from medvault.errors import RestoreTargetError, UnsafeSnapshot
from medvault.recovery.files import restore_files
from medvault.repository.keys import now_iso
from medvault.repository.packs import DATA_BLOB, TREE_BLOB
from medvault.repository.records import Node, Snapshot, encode_tree
from medvault.repository.repo import Repository
from medvault.repository.writer import BlobSink


def crafted_snapshot(repo: Repository, root_nodes: list[Node]) -> Snapshot:
    """Write a snapshot exactly as given, bypassing the walker's own name rules."""
    sink = BlobSink(repo)
    tree = sink.store(encode_tree(root_nodes), TREE_BLOB)
    sink.flush()
    snap = Snapshot(
        time=now_iso(),
        end_time=now_iso(),
        host="attacker",
        user="x",
        source="evil",
        kind="files",
        backup_type="full",
        paths=("/",),
        tree=tree,
    )
    return repo.load_snapshot(repo.save_snapshot(snap))


def file_node(repo: Repository, name: bytes, content: bytes) -> Node:
    sink = BlobSink(repo)
    blob = sink.store(content, DATA_BLOB)
    sink.flush()
    return Node(name=name, type="file", mode=0o644, size=len(content), content=(blob,))


def dir_node(repo: Repository, name: bytes, children: list[Node]) -> Node:
    sink = BlobSink(repo)
    tree = sink.store(encode_tree(children), TREE_BLOB)
    sink.flush()
    return Node(name=name, type="dir", mode=0o755, subtree=tree)


@pytest.mark.parametrize("name", [b"..", b"../../escaped", b"/etc/escaped", b".", b"a/../../b"])
def test_names_that_climb_out_are_refused(repo: Repository, tmp_path: Path, name: bytes) -> None:
    snap = crafted_snapshot(repo, [file_node(repo, name, b"owned")])
    target = tmp_path / "deep" / "target"
    with pytest.raises(UnsafeSnapshot):
        restore_files(reopen(repo), snap, str(target))
    assert not list(tmp_path.rglob("escaped"))


def test_nested_climbing_name_is_refused(repo: Repository, tmp_path: Path) -> None:
    inner = dir_node(repo, b"inner", [file_node(repo, b"..", b"owned")])
    snap = crafted_snapshot(repo, [inner])
    with pytest.raises(UnsafeSnapshot):
        restore_files(reopen(repo), snap, str(tmp_path / "target"))


def test_a_name_listed_twice_is_refused(repo: Repository, tmp_path: Path) -> None:
    """A symlink and a directory of one name would let the second write through the first."""
    link = Node(name=b"x", type="symlink", target=str(tmp_path / "outside").encode())
    folder = dir_node(repo, b"x", [file_node(repo, b"passwd", b"owned")])
    snap = crafted_snapshot(repo, [link, folder])
    (tmp_path / "outside").mkdir()
    with pytest.raises(UnsafeSnapshot):
        restore_files(reopen(repo), snap, str(tmp_path / "target"))
    assert not (tmp_path / "outside" / "passwd").exists()


def test_symlinks_are_restored_as_links_never_followed(repo: Repository, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = Node(name=b"link", type="symlink", target=str(outside).encode())
    snap = crafted_snapshot(repo, [link, file_node(repo, b"plain", b"ok")])
    restore_files(reopen(repo), snap, str(tmp_path / "target"))
    assert os.readlink(tmp_path / "target" / "link") == str(outside)
    assert list(outside.iterdir()) == []


def test_a_symlink_planted_in_the_target_is_not_followed(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    data = make_tree({"records/chart.txt": b"from backup"})
    initialized_cli("backup", str(data))
    outside = tmp_path / "outside"
    outside.mkdir()
    restored_parent = tmp_path / "out" / str(data).lstrip("/")
    restored_parent.mkdir(parents=True)
    (restored_parent / "records").symlink_to(outside)
    initialized_cli("restore", "latest", "--target", str(tmp_path / "out"), "--overwrite")
    assert list(outside.iterdir()) == []
    assert (restored_parent / "records").is_dir() and not (restored_parent / "records").is_symlink()
    assert (restored_parent / "records" / "chart.txt").read_bytes() == b"from backup"


def test_target_that_is_a_file_is_refused(initialized_cli: Cli, make_tree, tmp_path: Path) -> None:
    data = make_tree({"a": b"a"})
    initialized_cli("backup", str(data))
    (tmp_path / "afile").write_bytes(b"x")
    done = initialized_cli("restore", "latest", "--target", str(tmp_path / "afile"), check=False)
    assert done.returncode == RestoreTargetError.exit_code
    assert "not a directory" in done.stderr


def test_password_constant_is_not_the_default(repo: Repository) -> None:
    assert repo.slot.kind == "passphrase" and PASSWORD


def _setid_tree(make_tree, initialized_cli: Cli) -> Path:
    """A setuid-root program, a setgid one, a setgid shared folder and a sticky drop folder,
    backed up: what a client holding the key could plant in any snapshot."""
    data = make_tree(
        {
            "bin/tool": b"#!/bin/sh\n",
            "bin/group-tool": b"#!/bin/sh\n",
            "shared/a": b"",
            "drop/b": b"",
        }
    )
    (data / "bin/tool").chmod(0o4755)
    (data / "bin/group-tool").chmod(0o2755)
    (data / "shared").chmod(0o2775)
    (data / "drop").chmod(0o1777)
    initialized_cli("backup", str(data))
    return data


def _modes(root: Path) -> dict[str, int]:
    names = ("bin/tool", "bin/group-tool", "shared", "drop")
    return {name: (root / name).stat().st_mode & 0o7777 for name in names}


def test_restore_clears_setuid_and_setgid_bits_of_files_by_default(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    """Run as root, a restore would install a planted setuid-root program as one. Files lose
    both bits (and the restore says how many); directories keep setgid (a shared folder's
    group) and the sticky bit."""
    data = _setid_tree(make_tree, initialized_cli)
    done = initialized_cli("restore", "latest", "--target", str(tmp_path / "out"))
    restored = tmp_path / "out" / str(data).lstrip("/")
    assert (restored / "bin/tool").stat().st_uid == 0
    assert _modes(restored) == {
        "bin/tool": 0o755,
        "bin/group-tool": 0o755,
        "shared": 0o2775,
        "drop": 0o1777,
    }
    assert "2 file(s) restored without their setuid/setgid bits" in done.stderr
    assert "--keep-setuid" in done.stderr
    quiet = initialized_cli(
        "restore", "latest", "--target", str(tmp_path / "again"), "--no-setuid", "--json"
    )
    assert json.loads(quiet.stdout)["setid_cleared"] == 2
    assert _modes(tmp_path / "again" / str(data).lstrip("/"))["bin/tool"] == 0o755


def test_restore_keeps_setuid_and_setgid_bits_with_keep_setuid(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    data = _setid_tree(make_tree, initialized_cli)
    done = initialized_cli(
        "restore", "latest", "--target", str(tmp_path / "out"), "--keep-setuid", "--json"
    )
    assert json.loads(done.stdout)["setid_cleared"] == 0
    assert "setuid" not in done.stderr
    assert _modes(tmp_path / "out" / str(data).lstrip("/")) == {
        "bin/tool": 0o4755,
        "bin/group-tool": 0o2755,
        "shared": 0o2775,
        "drop": 0o1777,
    }
