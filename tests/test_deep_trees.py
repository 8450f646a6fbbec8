"""A tree 10,000 directories deep: anyone who can write into a backed-up folder can make one.
Its paths are five times PATH_MAX, deeper than Python's recursion limit, and one descriptor
per level would need ten times the usual limit of open files; backup, restore, ls, diff,
check, a re-encrypting copy and a drill all work on it within that limit."""

from __future__ import annotations

import json
import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import MEDVAULT, Cli

DEPTH = 10_000
OPEN_FILES = 1024  # the usual default soft limit


def make_chain(root: Path, depth: int) -> None:
    """root/d/d/.../d (depth levels), a file every 1,000 levels and one at the bottom,
    made through directory descriptors (the paths are far beyond PATH_MAX)."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            if level % 1000 == 0:
                write_at(fd, f"letter-{level}.txt", f"level {level}\n".encode() * 50)
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        write_at(fd, "bottom.txt", b"the deepest letter\n")
    finally:
        os.close(fd)


def write_at(dir_fd: int, name: str, content: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=dir_fd)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)


def tar_digest(directory: Path) -> bytes:
    """GNU tar's archive of a tree (names, types, modes, owners, nanosecond mtimes,
    contents); tar walks any depth. atime and ctime are left out: a restore cannot set them."""
    done = subprocess.run(
        [
            "tar",
            "--sort=name",
            "--numeric-owner",
            "--format=posix",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            "-C",
            str(directory),
            "-cf",
            "-",
            ".",
        ],
        capture_output=True,
        check=True,
    )
    return done.stdout


def limited(cli: Cli, *args: str) -> subprocess.CompletedProcess[str]:
    """medvault with the usual limit of open files."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))

    done = subprocess.run(
        [MEDVAULT, *args],
        cwd=cli.cwd,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit,
    )
    assert done.returncode == 0, f"medvault {args[0]} exited {done.returncode}: {done.stderr}"
    return done


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[Path]:
    """Removed with rm -rf at the end: pytest's own clean-up (shutil.rmtree) recurses."""
    yield tmp_path
    subprocess.run(["rm", "-rf", str(tmp_path)], check=True)


def test_a_tree_ten_thousand_levels_deep_backs_up_restores_lists_checks_and_drills(
    deep: Path,
) -> None:
    data = deep / "uploads"
    make_chain(data, DEPTH)
    config = deep / "medvault.toml"
    config.write_text(
        f'[repository.main]\nurl = "{deep / "repo"}"\n'
        f'[repository.offsite]\nurl = "{deep / "offsite"}"\n'
        f'[source.uploads]\nkind = "files"\npaths = ["{data}"]\nrepository = "main"\n'
    )
    cli = Cli("main", deep, deep / "repo")
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli("init")

    first = json.loads(limited(cli, "backup", "uploads", "--json").stdout)
    assert first["complete"], first
    limited(cli, "restore", "latest", "--target", str(deep / "out"))
    restored = deep / "out" / str(data).lstrip("/")
    assert tar_digest(restored) == tar_digest(data), "byte-identical, metadata included"

    listing = limited(cli, "ls", "latest").stdout.splitlines()
    below = [line for line in listing if f" {data}/" in line]
    assert len(below) == DEPTH + 11  # the chain, ten letters and the bottom one
    bottom = str(data) + "/d" * DEPTH + "/bottom.txt"
    assert sum(line.endswith(" " + bottom) for line in below) == 1

    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(DEPTH):
        below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.unlink("bottom.txt", dir_fd=fd)
    write_at(fd, "bottom.txt", b"amended\n")
    os.close(fd)
    limited(cli, "backup", "uploads")
    changes = json.loads(limited(cli, "diff", first["snapshot"], "latest", "--json").stdout)
    assert {"change": "M", "path": bottom} in changes, changes[-3:]

    limited(cli, "check", "--read-data")
    cli("--repo", "offsite", "init")  # a master key of its own: the copy re-encrypts every tree
    limited(cli, "copy", "--from", "main", "--to", "offsite")
    limited(cli, "--repo", "offsite", "check", "--read-data")
    scratch = deep / "scratch"
    scratch.mkdir()
    drill = json.loads(limited(cli, "drill", "uploads", "--scratch", str(scratch), "--json").stdout)
    assert drill["ok"], drill
    assert not list(scratch.iterdir())
