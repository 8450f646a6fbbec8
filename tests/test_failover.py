"""Failover on read and repair: when the primary's copy of a pack or WAL file is missing or
damaged, restore and wal-fetch read the secondary's, say so, and `medvault repair --from`
mends the primary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.test_pg_wal import crafted_segment

from conftest import Cli, S3Server, tree_digest

MiB = 1024 * 1024


def wal_name(number: int) -> str:
    return f"{1:08X}{0:08X}{number:08X}"


def flip(data: bytes) -> bytes:
    raw = bytearray(data)
    raw[len(raw) // 2] ^= 0x01
    return bytes(raw)


class Sites:
    def __init__(self, tmp_path: Path, offsite: str, offsite_location: str, data: Path) -> None:
        config = tmp_path / "medvault.toml"
        config.write_text(
            f'[repository.primary]\nurl = "{tmp_path / "primary"}"\nsecondary = "offsite"\n\n'
            f'[repository.offsite]\nurl = "{offsite}"\n\n'
            '[source.emr]\nkind = "postgres"\ndsn = "host=/nowhere dbname=emr"\n'
            'repository = "primary"\n'
        )
        self.primary = Cli("primary", tmp_path, tmp_path / "primary")
        self.offsite = Cli("offsite", tmp_path, offsite_location)
        for cli in (self.primary, self.offsite):
            cli.env["MEDVAULT_CONFIG"] = str(config)
        self.data = data
        self.tmp = tmp_path

    def restore(self, name: str) -> tuple[bool, str]:
        target = self.tmp / name
        done = self.primary("restore", "latest", "--target", str(target))
        same = tree_digest(target / str(self.data).lstrip("/")) == tree_digest(self.data)
        return same, done.stderr

    def biggest_pack(self) -> str:
        with self.primary.backend() as backend:
            return max(backend.list("data"), key=lambda o: o.size).name

    def repair(self, *args: str) -> dict[str, object]:
        done = self.primary("repair", "--from", "offsite", "--json", *args)
        result: dict[str, object] = json.loads(done.stdout)
        return result


def make_sites(tmp_path: Path, make_tree, offsite: str, location: str, shared: bool) -> Sites:
    data = make_tree(
        {
            "scans/ct.dcm": os.urandom(5 * MiB),
            "letters/a.txt": b"Referral to oncology.\n" * 4000,
        }
    )
    sites = Sites(tmp_path, offsite, location, data)
    sites.primary("init")
    sites.offsite("init", *(["--copy-keys-from", "primary"] if shared else []))
    sites.primary("backup", str(data))
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    for number in (1, 2, 3):
        segment = wal / wal_name(number)
        segment.write_bytes(crafted_segment(segment.name, 7_000_000_000_000_000_001, 16 * MiB))
        sites.primary("wal-push", "emr", str(segment))
    sites.primary("copy", "--from", "primary", "--to", "offsite")
    return sites


@pytest.fixture
def sites(s3_server: S3Server, tmp_path: Path, make_tree) -> Sites:
    url = f"s3://{s3_server.new_bucket()}/offsite"
    return make_sites(tmp_path, make_tree, url, url, shared=True)


def test_a_corrupted_pack_is_read_from_the_secondary_then_repaired(sites: Sites) -> None:
    pack = sites.biggest_pack()
    sites.primary.damage(pack, flip)
    same, stderr = sites.restore("out1")
    assert same, "the restore is byte-identical although the primary's pack is damaged"
    assert "read from the secondary offsite" in stderr and pack.split("/")[-1][:16] in stderr
    assert "medvault repair --from offsite" in stderr
    assert sites.primary("check", "--read-data", check=False).returncode == 13

    result = sites.repair()
    assert result["ok"] and result["packs_replaced"] == [pack.split("/")[-1]]
    sites.primary("check", "--read-data")
    same, stderr = sites.restore("out2")
    assert same and "secondary" not in stderr


def test_a_missing_pack_is_found_by_a_quick_repair(sites: Sites) -> None:
    pack = sites.biggest_pack()
    sites.primary.remove(pack)
    same, stderr = sites.restore("out")
    assert same and "read from the secondary" in stderr
    result = sites.repair("--quick")
    assert result["packs_replaced"] == [pack.split("/")[-1]]
    sites.primary("check", "--read-data")


def test_wal_fetch_reads_a_missing_or_damaged_segment_from_the_secondary(sites: Sites) -> None:
    wal = sites.primary.objects("wal")
    missing = next(n for n in wal if n.endswith(wal_name(1)))
    damaged = next(n for n in wal if n.endswith(wal_name(2)))
    sites.primary.remove(missing)
    sites.primary.damage(damaged, flip)
    for number in (1, 2):
        done = sites.primary("wal-fetch", "emr", wal_name(number), str(sites.tmp / f"w{number}"))
        assert "read from the secondary offsite" in done.stderr
        assert (sites.tmp / f"w{number}").read_bytes()[:2] == (0xD110).to_bytes(2, "little")
    done = sites.primary("wal-fetch", "emr", wal_name(9), str(sites.tmp / "w9"), check=False)
    assert done.returncode == 1, "the end of the archive is still the end"

    result = sites.repair()
    assert result["wal_replaced"] == [wal_name(2)] and result["wal_copied"] == 1
    done = sites.primary("wal-fetch", "emr", wal_name(2), str(sites.tmp / "again"))
    assert "secondary" not in done.stderr


def test_a_lost_snapshot_comes_back_from_the_secondary(sites: Sites) -> None:
    (snapshot,) = sites.primary.objects("snapshots")
    sites.primary.remove(snapshot)
    result = sites.repair()
    assert result["snapshots_copied"] == 1 and result["ok"]
    assert sites.primary.objects("snapshots") == [snapshot]


def test_a_secondary_with_its_own_keys_cannot_stand_in_for_packs(tmp_path: Path, make_tree) -> None:
    offsite = str(tmp_path / "offsite")
    sites = make_sites(tmp_path, make_tree, offsite, offsite, shared=False)
    sites.primary.damage(sites.biggest_pack(), flip)
    done = sites.primary("restore", "latest", "--target", str(tmp_path / "out"), check=False)
    assert done.returncode == 13 and "has its own keys" in done.stderr
    done = sites.primary("repair", "--from", "offsite", check=False)
    assert done.returncode == 13 and "own keys" in done.stdout
    done = sites.offsite("restore", "latest", "--target", str(tmp_path / "from-offsite"))
    restored = tmp_path / "from-offsite" / str(sites.data).lstrip("/")
    assert tree_digest(restored) == tree_digest(sites.data)
