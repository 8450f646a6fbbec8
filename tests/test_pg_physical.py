"""Physical backups of real PostgreSQL clusters: what is copied and left out, tablespaces,
incremental reuse, waiting for the WAL, page checksums, and bad input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.pgcluster import PgWorld, free_port

from medvault.backends import open_backend
from medvault.repository.keys import Credential, read_keyfile
from medvault.repository.repo import Repository


def _open(world: PgWorld) -> Repository:
    secret = read_keyfile(world.key_file)
    return Repository.open(open_backend(str(world.repo)), Credential(keyfile_secret=secret))


def _paths(world: PgWorld, snapshot_id: str) -> set[str]:
    repo = _open(world)
    snap = repo.find_snapshot(snapshot_id)
    return {p.decode() for p, _ in repo.walk(snap.tree)}


def test_full_and_incremental_physical_backup(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster()
    space = pg_world.tablespace()
    cluster.execute(
        "CREATE TABLE patients TABLESPACE space1 AS "
        "SELECT g AS id, md5(g::text) AS name FROM generate_series(1, 50000) g;"
        "CREATE UNLOGGED TABLE sessions AS SELECT g FROM generate_series(1, 1000) g;"
        "CREATE TABLE encounters AS SELECT g FROM generate_series(1, 50000) g;"
    )
    stray = cluster.datadir / "base" / "pgsql_tmp"
    stray.mkdir(exist_ok=True)
    (stray / "pgsql_tmp123.0").write_bytes(b"temp")
    # Files modified within a second before a backup starts are read again by the next one,
    # by design; initdb has just written every file, so let that second pass.
    time.sleep(1.1)
    done = pg_world.cli("backup", "emr", "--type", "full", "--json")
    result = json.loads(done.stdout)
    assert result["type"] == "full" and result["complete"]
    assert result["start_lsn"] and result["stop_lsn"] and result["stop_wal"]

    paths = _paths(pg_world, result["snapshot"])
    assert {"pgdata/PG_VERSION", "pgdata/global/pg_control", "pgdata/pg_wal"} <= paths
    assert not any(p.startswith("pgdata/pg_wal/0000") for p in paths)
    assert "pgdata/postmaster.pid" not in paths and "pgdata/postmaster.opts" not in paths
    assert not any("pgsql_tmp" in p or p.endswith("pg_internal.init") for p in paths)
    ts_oid = str(cluster.scalar("SELECT oid FROM pg_tablespace WHERE spcname = 'space1'"))
    assert f"pgdata/pg_tblspc/{ts_oid}" in paths
    assert any(p.startswith(f"tablespaces/{ts_oid}/PG_15_") for p in paths)
    # An unlogged table keeps only its init fork.
    node = cluster.scalar("SELECT relfilenode FROM pg_class WHERE relname = 'sessions'")
    db_oid = cluster.scalar("SELECT oid FROM pg_database WHERE datname = current_database()")
    dbdir = f"pgdata/base/{db_oid}"
    assert f"{dbdir}/{node}_init" in paths and f"{dbdir}/{node}" not in paths

    repo = _open(pg_world)
    snap = repo.find_snapshot(result["snapshot"])
    assert snap.kind == "postgres.physical"
    assert "START WAL LOCATION" in snap.facts["backup_label"]
    assert snap.facts["tablespaces"] == {ts_oid: str(space)}
    assert ts_oid in snap.facts["tablespace_map"]
    assert snap.facts["system_identifier"] == str(
        cluster.scalar("SELECT system_identifier FROM pg_control_system()")
    )
    # The backup's WAL is in the archive before the snapshot exists.
    assert (pg_world.repo / "wal" / "emr").exists()
    wal_names = {o.name.rsplit("/", 1)[1] for o in repo.backend.list("wal/emr")}
    assert result["stop_wal"] in wal_names

    cluster.execute("INSERT INTO encounters SELECT g FROM generate_series(1, 10) g")
    incremental = json.loads(pg_world.cli("backup", "emr", "--json").stdout)
    assert incremental["type"] == "incremental"
    assert incremental["parent"] == result["snapshot"]
    assert incremental["files_unchanged"] > 0
    assert incremental["bytes_read"] < result["bytes_read"]


def test_stream_method_copies_the_same_layout(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster()
    cluster.execute("CREATE TABLE notes AS SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
    local = json.loads(pg_world.cli("backup", "emr", "--type", "full", "--json").stdout)
    streamed = json.loads(
        pg_world.cli("backup", "emr", "--method", "stream", "--type", "full", "--json").stdout
    )
    assert streamed["method"] == "stream" and streamed["complete"]
    local_paths = _paths(pg_world, local["snapshot"])
    stream_paths = _paths(pg_world, streamed["snapshot"])
    # pg_basebackup also sends the empty pg_wal/archive_status directory.
    assert stream_paths - local_paths <= {"pgdata/pg_wal/archive_status"}
    assert {p for p in local_paths - stream_paths if "/base/" not in p} == set()


def test_damaged_page_is_reported_by_relation_and_block(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster(checksums=True)
    cluster.execute(
        "CREATE TABLE prescriptions AS SELECT g AS id, md5(g::text) AS drug "
        "FROM generate_series(1, 20000) g; CHECKPOINT"
    )
    relpath = cluster.scalar("SELECT pg_relation_filepath('prescriptions')")
    cluster.stop()
    data_file = cluster.datadir / relpath
    with open(data_file, "r+b") as handle:
        handle.seek(3 * 8192 + 5000)
        byte = handle.read(1)
        handle.seek(3 * 8192 + 5000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    cluster.start()
    done = pg_world.cli("backup", "emr", "--type", "full", check=False)
    assert done.returncode == 3, done.stderr
    assert "public.prescriptions" in done.stderr and "block(s) 3" in done.stderr
    snap = _open(pg_world).find_snapshot("latest")
    failures = snap.facts["checksum_failures"]
    assert failures == [
        {"file": relpath, "relation": "public.prescriptions in database postgres", "blocks": [3]}
    ]


def test_archive_mode_off_is_refused(pg_world: PgWorld) -> None:
    pg_world.init_repository()
    pg_world.write_config()
    pg_world.cluster.initdb()
    pg_world.cluster.start()
    done = pg_world.cli("backup", "emr", "--type", "full", check=False)
    assert done.returncode == 15
    assert "archive_mode is off" in done.stderr and "Traceback" not in done.stderr
    assert not list((pg_world.repo / "snapshots").iterdir())


def test_backup_waits_for_wal_and_gives_up_cleanly(pg_world: PgWorld) -> None:
    pg_world.init_repository()
    pg_world.write_config(extra_source="archive_timeout_s = 3\n")
    pg_world.cluster.initdb(settings={"archive_mode": "on", "archive_command": "'false'"})
    pg_world.cluster.start()
    done = pg_world.cli("backup", "emr", "--type", "full", check=False)
    assert done.returncode == 19, done.stderr
    assert "backup not saved" in done.stderr and "wal-status emr" in done.stderr
    assert not list((pg_world.repo / "snapshots").iterdir())


def test_server_down_and_mismatched_data_directory(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster()
    other = pg_world.new_cluster("other")
    other.initdb()
    config = pg_world.config.read_text()
    pg_world.config.write_text(config.replace(str(cluster.datadir), str(other.datadir)))
    done = pg_world.cli("backup", "emr", "--type", "full", check=False)
    assert done.returncode == 15 and "disagree" in done.stderr
    pg_world.config.write_text(config)
    cluster.stop()
    done = pg_world.cli("backup", "emr", "--type", "full", check=False)
    assert done.returncode == 15
    assert "cannot connect" in done.stderr and "Traceback" not in done.stderr
    assert os.path.isdir(Path(pg_world.repo) / "snapshots")


def test_tablespace_is_restored_to_a_new_location(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster()
    pg_world.tablespace()
    cluster.execute(
        "CREATE TABLE patients TABLESPACE space1 AS SELECT g AS id FROM generate_series(1, 5000) g"
    )
    pg_world.cli("backup", "emr", "--type", "full")
    streamed = pg_world.cli("backup", "emr", "--method", "stream", "--type", "full", check=False)
    assert streamed.returncode == 15
    assert "tablespaces (space1)" in streamed.stderr and "local method" in streamed.stderr
    oid = str(cluster.scalar("SELECT oid FROM pg_tablespace WHERE spcname = 'space1'"))
    moved = pg_world.base / "space1-restored"
    restored = pg_world.new_cluster("restored")
    restored.port = free_port()
    pg_world.cli(
        "restore",
        "latest:emr",
        "--pgdata",
        str(restored.datadir),
        "--tablespace",
        f"{oid}={moved}",
        "--recovery-target",
        "immediate",
        "--start",
        "--port",
        str(restored.port),
    )
    assert os.readlink(restored.datadir / "pg_tblspc" / oid) == str(moved)
    assert restored.scalar("SELECT count(*) FROM patients") == 5000
    assert restored.scalar(f"SELECT pg_tablespace_location({oid})") == str(moved)
    assert any(moved.iterdir())


def test_spread_checkpoint_is_configurable(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster(settings={"log_checkpoints": "on"})
    pg_world.write_config(extra_source='checkpoint = "spread"\n')
    assert json.loads(pg_world.cli("backup", "emr", "--type", "full", "--json").stdout)["complete"]
    starts = [line for line in cluster.log().splitlines() if "checkpoint starting" in line]
    # The backup's checkpoint was asked for without "immediate": the server paces it.
    assert starts and "force wait" in starts[-1] and "immediate" not in starts[-1]
    pg_world.write_config()
    pg_world.cli("backup", "emr", "--type", "full")
    starts = [line for line in cluster.log().splitlines() if "checkpoint starting" in line]
    assert "immediate force wait" in starts[-1]
