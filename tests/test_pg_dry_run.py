"""`backup --dry-run` of PostgreSQL sources: the dump (logical) or the data directory's walk
(physical) is chunked against the repository's index and counted, and nothing is written."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.pgcluster import PgWorld

from medvault.backends import open_backend
from medvault.repository.keys import Credential, read_keyfile
from medvault.repository.repo import Repository

TABLES_SQL = """
CREATE TABLE patients AS SELECT g AS id, md5(g::text) AS name FROM generate_series(1, 30000) g;
CREATE TABLE notes AS SELECT g AS id, repeat(md5(g::text), 4) AS body
    FROM generate_series(1, 150000) g;
"""


def _listing(repo: Path, leave_out: str | None = None) -> list[str]:
    """Every object of the repository (the WAL archive, which the server fills on its own
    schedule, left out when asked)."""
    found = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    return [p for p in found if leave_out is None or not p.startswith(leave_out)]


def _stats(world: PgWorld, snapshot_id: str) -> dict[str, int]:
    secret = read_keyfile(world.key_file)
    repo = Repository.open(open_backend(str(world.repo)), Credential(keyfile_secret=secret))
    stats = repo.find_snapshot(snapshot_id).stats
    return {key: int(stats[key]) for key in ("bytes_added", "blobs_added")}


def _dry_run(world: PgWorld, *args: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(
        world.cli("backup", "emr", "--dry-run", *args, "--json").stdout
    )
    return doc


def test_logical_dry_run_counts_what_the_dump_would_add_and_writes_nothing(
    pg_world: PgWorld,
) -> None:
    pg_world.init_repository()
    pg_world.write_config()
    pg_world.cluster.initdb()
    pg_world.cluster.start()
    pg_world.cluster.execute(TABLES_SQL)
    before = _listing(pg_world.repo)

    dry = _dry_run(pg_world, "--logical")
    assert _listing(pg_world.repo) == before
    assert dry["kind"] == "postgres.logical" and dry["tables"] == 2 and dry["rows"] == 180000
    assert dry["bytes_read"] == dry["bytes_total"] and int(dry["bytes_new"]) > 0  # type: ignore[call-overload]

    # Nothing changed in between: the real dump adds what the dry run counted, but for the
    # dump's header chunk and the tree, which hold the time and may compress a few bytes
    # differently.
    done = json.loads(pg_world.cli("backup", "emr", "--logical", "--json").stdout)
    real = _stats(pg_world, done["snapshot"])
    assert real["blobs_added"] == dry["blobs_new"]
    assert abs(real["bytes_added"] - int(dry["bytes_added"])) <= 64  # type: ignore[call-overload]

    # Only the chunk holding the dump's header (its time) and the tree are new again.
    again = _dry_run(pg_world, "--logical")
    assert int(again["bytes_new"]) < int(dry["bytes_new"]) // 4  # type: ignore[call-overload]


def test_logical_dry_run_of_named_tables_reads_only_them(pg_world: PgWorld) -> None:
    pg_world.init_repository()
    pg_world.write_config()
    pg_world.cluster.initdb()
    pg_world.cluster.start()
    pg_world.cluster.execute(TABLES_SQL)
    before = _listing(pg_world.repo)
    dry = _dry_run(pg_world, "--logical", "--table", "patients")
    assert dry["tables"] == 1 and dry["rows"] == 30000
    csv = _dry_run(pg_world, "--logical", "--format", "csv", "--table", "notes")
    assert csv["kind"] == "postgres.csv" and csv["files_new"] == 1 and csv["rows"] == 150000
    assert _listing(pg_world.repo) == before


def test_physical_dry_run_walks_the_data_directory_without_starting_a_backup(
    pg_world: PgWorld,
) -> None:
    # No timed checkpoint during the test: the only one would be pg_backup_start's.
    cluster = pg_world.start_archiving_cluster(settings={"checkpoint_timeout": "'1h'"})
    cluster.execute(TABLES_SQL)
    cluster.execute("CHECKPOINT")
    time.sleep(1.1)  # files written within a second of a backup are read again by design
    before = _listing(pg_world.repo, "wal/")
    checkpoint = cluster.scalar("SELECT checkpoint_lsn FROM pg_control_checkpoint()")

    dry = _dry_run(pg_world, "--type", "full")
    assert _listing(pg_world.repo, "wal/") == before
    assert dry["kind"] == "postgres.physical" and dry["parent"] is None
    assert any("WAL" in str(note) for note in dry["notes"])  # type: ignore[attr-defined]
    # pg_backup_start was never called: it would have begun with a checkpoint.
    assert cluster.scalar("SELECT checkpoint_lsn FROM pg_control_checkpoint()") == checkpoint

    done = json.loads(pg_world.cli("backup", "emr", "--type", "full", "--json").stdout)
    added = _stats(pg_world, done["snapshot"])["bytes_added"]
    # The real backup begins with a checkpoint and writes a backup label, and the server
    # touches a few pages (pg_control, the statistics) in between: a tolerance of 10 %.
    assert abs(added - int(dry["bytes_added"])) <= added // 10  # type: ignore[call-overload]

    time.sleep(1.1)
    text = pg_world.cli("backup", "emr", "--dry-run").stdout
    assert "physical backup of emr" in text and "nothing was written" in text
    assert "note: the WAL" in text
    again = _dry_run(pg_world)
    assert again["parent"] == done["snapshot"]
    assert int(again["bytes_new"]) < int(dry["bytes_new"]) // 10  # type: ignore[call-overload]


def test_streamed_physical_dry_run_is_refused_in_one_line(pg_world: PgWorld) -> None:
    pg_world.init_repository()
    pg_world.write_config()
    done = pg_world.cli("backup", "emr", "--dry-run", "--method", "stream", check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "base backup" in lines[0] and "Traceback" not in done.stderr
