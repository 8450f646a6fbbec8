"""`medvault check` finds damage and names the snapshots and files it hurts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import Cli

BACKENDS = ("local", "s3")


@pytest.fixture
def backed_up(initialized_cli: Cli, make_tree) -> tuple[Cli, Path]:
    data = make_tree(
        {
            "scans/mri.dcm": os.urandom(3_000_000),
            "letters/discharge.txt": b"Patient discharged in good health.\n" * 2000,
        }
    )
    initialized_cli("backup", str(data))
    return initialized_cli, data


def packs(cli: Cli) -> list[str]:
    """Pack object names, smallest first."""
    with cli.backend() as backend:
        found = list(backend.list("data"))
    return [obj.name for obj in sorted(found, key=lambda obj: obj.size)]


def flip_byte(data: bytes, at: int = 100) -> bytes:
    raw = bytearray(data)
    raw[at] ^= 0x01
    return bytes(raw)


def leaf(name: str) -> str:
    return name.rsplit("/", 1)[1]


def check(cli: Cli, *args: str) -> tuple[int, dict[str, object]]:
    done = cli("check", *args, "--json", check=False)
    return done.returncode, json.loads(done.stdout)


def test_clean_repository_passes_with_every_byte_read(backed_up: tuple[Cli, Path]) -> None:
    cli, _ = backed_up
    code, report = check(cli, "--read-data")
    assert code == 0 and report["ok"]
    assert report["packs_read"] == report["packs"] > 0


def test_flipped_byte_in_a_pack_is_found_and_the_file_named(backed_up: tuple[Cli, Path]) -> None:
    cli, data = backed_up
    biggest = packs(cli)[-1]
    cli.damage(biggest, flip_byte)
    assert check(cli)[0] == 0  # structure alone cannot see a flipped bit...
    code, report = check(cli, "--read-data")  # ...reading the data does
    assert code == 13
    errors = "\n".join(report["errors"])
    assert leaf(biggest)[:16] in errors and "no longer hash" in errors
    damaged = [p for paths in report["affected"].values() for p in paths]
    assert damaged == [f"{data}/scans/mri.dcm"]


def test_deleted_pack_is_found_without_reading_data(backed_up: tuple[Cli, Path]) -> None:
    cli, data = backed_up
    victim = packs(cli)[-1]
    cli.remove(victim)
    code, report = check(cli)
    assert code == 13
    assert any(leaf(victim)[:16] in e and "missing" in e for e in report["errors"])
    assert f"{data}/scans/mri.dcm" in next(iter(report["affected"].values()))


def test_truncated_index_is_found_and_the_damage_traced(backed_up: tuple[Cli, Path]) -> None:
    cli, _ = backed_up
    (index,) = cli.objects("index")
    cli.damage(index, lambda data: data[:40])
    code, report = check(cli)
    assert code == 13
    assert any(leaf(index)[:12] in e and "unreadable" in e for e in report["errors"])
    assert report["affected"], "snapshots depending on the lost index must be named"


def test_damaged_snapshot_object_is_named(backed_up: tuple[Cli, Path]) -> None:
    cli, _ = backed_up
    (snapshot,) = cli.objects("snapshots")
    cli.damage(snapshot, lambda data: flip_byte(data, len(data) - 1))
    code, report = check(cli)
    assert code == 13
    assert any(leaf(snapshot)[:12] in e for e in report["errors"])


def test_subset_reads_only_part_of_the_packs(initialized_cli: Cli, make_tree) -> None:
    data = make_tree({f"f{i}": os.urandom(9_000_000) for i in range(4)})
    initialized_cli("backup", str(data))
    code, report = check(initialized_cli, "--read-data-subset", "25%")
    assert code == 0
    assert 0 < int(report["packs_read"]) < int(report["packs"])


def test_restore_refuses_damaged_data_rather_than_writing_it(
    backed_up: tuple[Cli, Path], tmp_path: Path
) -> None:
    cli, _ = backed_up
    cli.damage(packs(cli)[-1], flip_byte)
    done = cli("restore", "latest", "--target", str(tmp_path / "out"), check=False)
    assert done.returncode == 13
    assert "failed authentication" in done.stderr
    assert not list((tmp_path / "out").rglob("mri.dcm"))


def test_unreferenced_packs_are_a_note_not_an_error(backed_up: tuple[Cli, Path]) -> None:
    cli, _ = backed_up
    with cli.backend() as backend:
        backend.store(f"data/ff/{'f' * 64}", backend.load(packs(cli)[0]))
    code, report = check(cli, "--read-data")
    assert code == 0
    assert any("not referenced" in n for n in report["notes"])
