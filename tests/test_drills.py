"""Restore drills: files and logical PostgreSQL snapshots restored into scratch space,
validated, timed against the tier's RTO, recorded, and always cleaned up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.pgcluster import PgWorld

from conftest import MEDVAULT, Cli

MiB = 1024 * 1024


def files_cli(tmp_path: Path, data: Path, rto: str = "1h") -> Cli:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.main]\nurl = "{tmp_path / "repo"}"\n'
        f'[tier.records]\nrto = "{rto}"\n'
        f'[source.letters]\nkind = "files"\npaths = ["{data}"]\ntier = "records"\n'
    )
    cli = Cli("main", tmp_path, tmp_path / "repo")
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli("init")
    return cli


def test_files_drill_passes_is_recorded_and_leaves_nothing(tmp_path: Path, make_tree) -> None:
    data = make_tree({"a/letter.txt": b"Dear colleague\n" * 500, "b/scan.dcm": os.urandom(MiB)})
    cli = files_cli(tmp_path, data)
    cli("backup", "letters")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = json.loads(cli("drill", "letters", "--scratch", str(scratch), "--json").stdout)
    assert result["ok"] and result["within_rto"] is True and result["rto_target_s"] == 3600
    assert {c["name"] for c in result["checks"]} == {"restore", "files"}
    assert not list(scratch.iterdir()), "the restored patient data is gone"
    listed = json.loads(cli("drills", "--json").stdout)
    assert [d["snapshot"] for d in listed] == [result["snapshot"]]


def test_a_drill_that_cannot_restore_fails_and_is_recorded(tmp_path: Path, make_tree) -> None:
    data = make_tree({"scan.dcm": os.urandom(2 * MiB)})
    cli = files_cli(tmp_path, data)
    cli("backup", "letters")
    biggest = max((cli.repo / "data").rglob("*"), key=lambda p: p.stat().st_size)
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2] ^= 1
    biggest.write_bytes(bytes(raw))
    done = cli("drill", "letters", check=False)
    assert done.returncode == 23 and "failed" in done.stderr
    (record,) = json.loads(cli("drills", "--json").stdout)
    assert record["ok"] is False and "authentication" in record["error"]


def test_an_interrupted_drill_cleans_up(tmp_path: Path, make_tree) -> None:
    data = make_tree({f"scan{n}.dcm": os.urandom(40 * MiB) for n in range(6)})
    cli = files_cli(tmp_path, data)
    cli("backup", "letters")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.Popen(
        [MEDVAULT, "drill", "letters", "--scratch", str(scratch)],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not any(scratch.rglob("*.dcm")) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not list(scratch.iterdir()), "Ctrl-C still removes the restored data"


def test_logical_drill_compares_every_tables_row_count(pg_world: PgWorld) -> None:
    world = pg_world
    cluster = world.start_archiving_cluster()
    cluster.execute(
        "CREATE TABLE patients (id int); INSERT INTO patients SELECT generate_series(1, 500);"
        "CREATE TABLE notes (id int); INSERT INTO notes SELECT generate_series(1, 70)"
    )
    world.cli("backup", "emr", "--logical")
    result = json.loads(world.cli("drill", "emr", "--json").stdout)
    assert result["ok"], result
    assert "2 tables, 570 rows" in result["checks"][0]["detail"]
    databases = {row[0] for row in cluster.query("SELECT datname FROM pg_database")}
    assert not any(name.startswith("medvault_drill_") for name in databases)
