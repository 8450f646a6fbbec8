"""Prune beside backups, in the interleavings that lost data: a backup that read the
condemned records just before a prune stored its own, and backups on hosts whose clocks run
ten minutes ahead or behind. Every snapshot restores and `check --read-data` stays clean.

The interleavings are made with named fault points (src/medvault/faults.py): each process
stops at an exact moment until the test lets it go on."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from tests.faultpoints import Pause, faults_env

from conftest import Cli, skewed_clock, tree_digest

BACKENDS = ("local", "s3")
MiB = 1024 * 1024


def finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}: {err}"
    result: dict[str, object] = json.loads(out)
    return result


def forgotten_archive(cli: Cli, make_tree) -> Path:
    """A tree whose only snapshot is forgotten: its packs are what a prune condemns, and what
    a new backup of the same tree deduplicates against."""
    data = make_tree({"archive/ct-2019.dcm": os.urandom(6 * MiB), "archive/mri.dcm": b"m" * MiB})
    old = json.loads(cli("backup", str(data), "--json").stdout)["snapshot"]
    cli("forget", old)
    return data


def assert_every_snapshot_restores(cli: Cli, data: Path, tmp_path: Path) -> None:
    cli("check", "--read-data")
    for n, snap in enumerate(json.loads(cli("snapshots", "--json").stdout)):
        target = tmp_path / f"restored-{n}"
        cli("restore", snap["id"], "--target", str(target))
        assert tree_digest(target / str(data).lstrip("/")) == tree_digest(data), snap["id"]


def test_backup_that_read_the_records_just_before_a_prune_stored_its_own_loses_nothing(
    initialized_cli: Cli, make_tree, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    cli = initialized_cli
    data = forgotten_archive(cli, make_tree)
    condemning = Pause(tmp_path / "faults", "prune.before-record")
    committing = Pause(tmp_path / "faults", "snapshot.before-commit")

    # The prune has chosen the archive's packs and is about to store its record...
    prune = cli.popen(
        "prune", "--young", "0s", "--json", env=faults_env(**{condemning.name: condemning.action})
    )
    processes.append(prune)
    condemning.wait(prune)
    # ...when a backup of the same tree starts: it finds no record, deduplicates against
    # those packs, and stops just before committing its snapshot.
    backup = cli.popen(
        "backup", str(data), "--json", env=faults_env(**{committing.name: committing.action})
    )
    processes.append(backup)
    committing.wait(backup)
    assert json.loads(cli("snapshots", "--json").stdout) == []

    condemning.release()
    first = finish(prune)
    assert first["condemned_packs"], first
    assert first["deleted_packs"] == 0 and first["waiting"], "it waits for the running backup"

    committing.release()
    finish(backup)
    second = json.loads(cli("prune", "--young", "0s", "--json").stdout)
    assert second["deleted_packs"] >= 1 and not second["waiting"], second
    assert_every_snapshot_restores(cli, data, tmp_path)


@pytest.mark.parametrize("offset", ["+10m", "-10m"])
def test_backups_on_hosts_with_skewed_clocks_lose_nothing_to_a_prune(
    initialized_cli: Cli,
    make_tree,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
    offset: str,
) -> None:
    cli = initialized_cli
    data = forgotten_archive(cli, make_tree)
    committing = Pause(tmp_path / "faults", "snapshot.before-commit")
    # A backup on the skewed host reuses the forgotten packs and stops before committing;
    # the prune (this host's clock) condemns them meanwhile.
    backup = cli.popen(
        "backup",
        str(data),
        "--json",
        env=skewed_clock(offset) | faults_env(**{committing.name: committing.action}),
    )
    processes.append(backup)
    committing.wait(backup)
    during = json.loads(cli("prune", "--young", "0s", "--json").stdout)
    assert during["condemned_packs"] and during["deleted_packs"] == 0, during
    # A second backup on the skewed host, started after the record: it must not reuse them.
    later = cli("backup", str(data), "--json", env=skewed_clock(offset))
    assert later.returncode == 0
    committing.release()
    finish(backup)
    after = json.loads(cli("prune", "--young", "0s", "--json").stdout)
    assert after["deleted_packs"] >= 1 and not after["waiting"], after
    assert_every_snapshot_restores(cli, data, tmp_path)
