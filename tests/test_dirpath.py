"""DirPath: the directories from a base down to the current one, a bounded number of them
open, each reopened on the way up as the very directory it was on the way down."""

from __future__ import annotations

import os
from pathlib import Path

from medvault.dirpath import KEEP_OPEN, DirPath


def chain(root: Path, depth: int) -> Path:
    """root/d/d/... depth levels (short enough here for ordinary paths)."""
    path = root.joinpath(*["d"] * depth)
    path.mkdir(parents=True)
    return path


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def descend(dirs: DirPath, levels: int) -> None:
    for _ in range(levels):
        dirs.enter(b"d")


def test_a_dirpath_holds_a_bounded_number_of_descriptors_however_deep(tmp_path: Path) -> None:
    chain(tmp_path, 300)
    base = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    before = open_descriptors()
    dirs = DirPath(base, os.fsencode(tmp_path))
    try:
        descend(dirs, 300)
        assert open_descriptors() - before == KEEP_OPEN
        assert dirs.path() == os.fsencode(tmp_path.joinpath(*["d"] * 300))
        for _ in range(300):
            assert dirs.leave()
        assert dirs.depth == 0 and open_descriptors() == before
    finally:
        dirs.close()
        os.close(base)


def test_going_up_past_a_directory_moved_away_reopens_its_parent_by_name(tmp_path: Path) -> None:
    """`..` of a moved directory is its new parent: refused (device and inode differ), and
    the parent is found again by name from the base."""
    chain(tmp_path, 100)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    dirs = DirPath(base, os.fsencode(tmp_path))
    try:
        descend(dirs, 100)
        while dirs.depth > 60:
            assert dirs.leave()
        parent = tmp_path.joinpath(*["d"] * 59)
        parent_stat = parent.stat()
        os.rename(parent / "d", elsewhere / "moved")  # the directory we are in
        assert dirs.leave(), "the parent is still where it was"
        assert (os.fstat(dirs.fd).st_ino, dirs.depth) == (parent_stat.st_ino, 59)
    finally:
        dirs.close()
        os.close(base)


def test_a_directory_replaced_while_below_it_is_lost_never_taken_for_another(
    tmp_path: Path,
) -> None:
    """Level 2 moved away and its own child moved into its place: going up, every level below
    is still reached through `..`, but the stranger at level 2's name is refused."""
    chain(tmp_path, 100)
    base = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    dirs = DirPath(base, os.fsencode(tmp_path))
    try:
        descend(dirs, 100)
        while dirs.depth > 60:
            assert dirs.leave()
        os.rename(tmp_path / "d" / "d", tmp_path / "gone")
        os.rename(tmp_path / "gone" / "d", tmp_path / "d" / "d")
        while dirs.depth > 3:
            assert dirs.leave()
        assert not dirs.leave()
        assert dirs.lost and dirs.depth == 2
        assert dirs.leave(), "level 1 is found again by name"
        assert os.fstat(dirs.fd).st_ino == (tmp_path / "d").stat().st_ino
    finally:
        dirs.close()
        os.close(base)
