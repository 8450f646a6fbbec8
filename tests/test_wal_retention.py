"""WAL retention in prune: WAL no retained physical backup and no PITR window needs goes; a
retained backup stays recoverable to the newest archived WAL."""

from __future__ import annotations

import json

from tests.pgcluster import PgCluster, PgWorld, free_port


def wal_files(world: PgWorld) -> set[str]:
    return {p.name for p in (world.repo / "wal" / "emr").rglob("*") if p.is_file()}


def test_prune_removes_only_wal_no_retained_backup_or_window_needs(pg_world: PgWorld) -> None:
    world = pg_world
    cluster = world.start_archiving_cluster()
    cluster.execute("CREATE TABLE visits (n int)")
    first = json.loads(world.cli("backup", "emr", "--type", "full", "--json").stdout)
    for n in range(3):
        cluster.execute(f"INSERT INTO visits SELECT generate_series(1, 1000) + {n * 1000}")
        cluster.wait_archived(cluster.switch_wal())
    second = json.loads(world.cli("backup", "emr", "--type", "full", "--json").stdout)
    cluster.execute("INSERT INTO visits SELECT generate_series(3001, 4000)")
    cluster.wait_archived(cluster.switch_wal())
    world.cli("forget", first["snapshot"])
    archived = wal_files(world)
    assert first["start_wal"] in archived

    world.write_config('pitr_window = "30d"\n')  # into [source.emr]
    kept = json.loads(world.cli("prune", "--young", "0s", "--json").stdout)["wal"]
    assert kept["deleted"] == 0 and wal_files(world) == archived, "all within the 30-day window"

    world.write_config()
    pruned = json.loads(world.cli("prune", "--young", "0s", "--json").stdout)["wal"]
    left = wal_files(world)
    assert pruned["deleted"] >= 3 and first["start_wal"] not in left
    assert second["start_wal"] in left and second["stop_wal"] in left
    assert any(name.endswith(".backup") for name in left), "backup labels stay"

    restored = PgCluster(world.base / "restored", free_port())
    world.clusters.append(restored)
    done = world.cli(
        "restore",
        second["snapshot"],
        "--pgdata",
        str(restored.datadir),
        "--recovery-target",
        "latest",
        "--start",
        "--port",
        str(restored.port),
        "--json",
    )
    assert json.loads(done.stdout)["reached"]["lsn"]
    assert restored.scalar("SELECT count(*) FROM visits") == 4000
