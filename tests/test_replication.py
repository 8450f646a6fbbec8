"""`replicate = true`: each new snapshot and WAL file reaches the secondary right after the
primary; a secondary that is down never costs the primary copy."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.test_pg_wal import crafted_segment

from conftest import Cli, S3Server

MiB = 1024 * 1024


def write_config(tmp_path: Path, primary: Path, secondary: str, data: Path) -> Path:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.primary]\nurl = "{primary}"\nsecondary = "offsite"\nreplicate = true\n\n'
        f'[repository.offsite]\nurl = "{secondary}"\n\n'
        f'[source.uploads]\nkind = "files"\npaths = ["{data}"]\nrepository = "primary"\n\n'
        '[source.emr]\nkind = "postgres"\ndsn = "host=/nowhere dbname=emr"\n'
        'repository = "primary"\n'
    )
    return config


def clis(tmp_path: Path, config: Path) -> tuple[Cli, Cli]:
    primary, offsite = Cli("primary", tmp_path), Cli("offsite", tmp_path)
    for cli in (primary, offsite):
        cli.env["MEDVAULT_CONFIG"] = str(config)
    return primary, offsite


def segment(folder: Path, number: int) -> Path:
    name = f"{1:08X}{0:08X}{number:08X}"
    path = folder / name
    path.write_bytes(crafted_segment(name, 7_000_000_000_000_000_001, 16 * MiB))
    return path


def test_each_backup_and_wal_file_reaches_the_secondary(
    s3_server: S3Server, tmp_path: Path, make_tree
) -> None:
    data = make_tree({"scan.dcm": os.urandom(2 * MiB), "note.txt": b"Seen in clinic.\n" * 500})
    config = write_config(tmp_path, tmp_path / "primary", f"s3://{s3_server.new_bucket()}/dr", data)
    primary, offsite = clis(tmp_path, config)
    primary("init")
    offsite("init", "--copy-keys-from", "primary")
    snap = json.loads(primary("backup", "uploads", "--json").stdout)["snapshot"]
    assert [s["id"] for s in json.loads(offsite("snapshots", "--json").stdout)] == [snap]

    wal = tmp_path / "pg_wal"
    wal.mkdir()
    pushed = segment(wal, 1)
    primary("wal-push", "emr", str(pushed))
    offsite("wal-fetch", "emr", pushed.name, str(tmp_path / "from-offsite"))
    assert (tmp_path / "from-offsite").read_bytes() == pushed.read_bytes()
    offsite("check", "--read-data")


def test_a_secondary_that_is_down_costs_nothing_in_the_primary(
    s3_server: S3Server, tmp_path: Path, make_tree
) -> None:
    data = make_tree({"note.txt": b"Seen in clinic.\n" * 500})
    config = write_config(tmp_path, tmp_path / "primary", "s3://bucket-that-is-gone/dr", data)
    primary, _ = clis(tmp_path, config)
    primary("init")
    done = primary("backup", "uploads", check=False)
    assert done.returncode == 22
    assert "stored in the primary" in done.stderr and "medvault copy" in done.stderr
    assert len(json.loads(primary("snapshots", "--json").stdout)) == 1

    wal = tmp_path / "pg_wal"
    wal.mkdir()
    pushed = segment(wal, 1)
    done = primary("wal-push", "emr", str(pushed))
    assert "not replicated" in done.stderr
    primary("wal-fetch", "emr", pushed.name, str(tmp_path / "back"))
