"""Physical restore and point-in-time recovery against real clusters.

One archiving cluster and one base backup serve the module: rows t1, t2, t3 are inserted after
the backup with WAL switches between, and recovery to a point between t2 and t3 (by time, LSN,
xid and restore point name) must bring back t1 and t2 and not t3.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.pgcluster import (
    MEDVAULT,
    PgCluster,
    PgWorld,
    as_postgres,
    free_port,
    make_pg_tempdir,
    running_clusters,
)

EXIT_RESTORE_TARGET = 16
EXIT_TARGET_FULL = 17
EXIT_WAL_MISSING = 19
EXIT_RECOVERY_FAILED = 20
EXIT_SNAPSHOT_NOT_FOUND = 4


@dataclass
class Scenario:
    world: PgWorld
    cluster: PgCluster
    snapshot: str
    targets: dict[str, str]  # --target-KIND -> a point between t2 and t3
    t3_at: datetime  # when t3, the last transaction archived by the fixture, was committed

    def restore(
        self, pgdata: Path, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.world.cli("restore", self.snapshot, "--pgdata", str(pgdata), *args, check=check)

    def started(self, name: str) -> tuple[PgCluster, int]:
        """A fresh data directory and free port, registered so the fixture stops it."""
        port = free_port()
        cluster = PgCluster(self.world.base / name, port)
        self.world.clusters.append(cluster)
        return cluster, port


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    base = make_pg_tempdir("medvault-pitr-")
    with running_clusters() as clusters:
        world = PgWorld(base, clusters)
        cluster = world.start_archiving_cluster()
        cluster.execute(
            "CREATE TABLE events (id serial PRIMARY KEY, label text NOT NULL,"
            " at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        backup = json.loads(world.cli("backup", "emr", "--type", "full", "--json").stdout)
        # Enough WAL after the backup that recovery replays several segments.
        cluster.pgbench("-i", "-s", "2", "-q")
        cluster.execute("INSERT INTO events (label) VALUES ('t1')")
        cluster.switch_wal()
        xid = cluster.scalar(
            "WITH row AS (INSERT INTO events (label) VALUES ('t2') RETURNING xmin)"
            " SELECT xmin::text FROM row"
        )
        lsn = cluster.scalar("SELECT pg_current_wal_lsn()::text")
        between = cluster.scalar("SELECT clock_timestamp()")
        mark = json.loads(world.cli("mark", "between", "--json").stdout)
        assert mark["lsn"] and mark["source"] == "emr"
        time.sleep(0.3)
        t3_at = cluster.scalar(
            "WITH row AS (INSERT INTO events (label) VALUES ('t3') RETURNING at) SELECT at FROM row"
        )
        cluster.wait_archived(cluster.switch_wal())
        yield Scenario(
            world,
            cluster,
            backup["snapshot"],
            {"time": between.isoformat(), "lsn": lsn, "xid": xid, "name": "between"},
            t3_at,
        )
    shutil.rmtree(base, ignore_errors=True)


def labels(cluster: PgCluster) -> list[str]:
    return [row[0] for row in cluster.query("SELECT label FROM events ORDER BY id")]


@pytest.mark.parametrize("kind", ["time", "lsn", "xid", "name"])
def test_recovers_to_a_point_between_t2_and_t3(scenario: Scenario, kind: str) -> None:
    restored, port = scenario.started(f"pitr-{kind}")
    done = scenario.restore(
        restored.datadir,
        f"--target-{kind}",
        scenario.targets[kind],
        "--start",
        "--port",
        str(port),
        "--json",
    )
    report = json.loads(done.stdout)
    assert labels(restored) == ["t1", "t2"]
    assert report["reached"]["state"] == "promoted"
    assert report["reached"]["lsn"] and report["reached"]["timeline"] >= 2
    assert report["wal"]["first"] < report["wal"]["last"]  # several segments replayed
    # A restored copy never archives into production's archive unless asked.
    assert restored.scalar("SHOW archive_mode") == "off"
    assert (restored.datadir / "postgresql.auto.conf").read_text().count("wal-fetch emr") == 1


def test_promotion_starts_a_timeline_that_a_later_pitr_follows(scenario: Scenario) -> None:
    branch, port = scenario.started("branch")
    done = scenario.restore(
        branch.datadir,
        "--target-name",
        "between",
        "--archive",
        "--start",
        "--port",
        str(port),
        "--json",
    )
    first = json.loads(done.stdout)["reached"]
    assert branch.scalar("SHOW archive_mode") == "on"
    branch.execute("INSERT INTO events (label) VALUES ('t2b')")
    after = branch.scalar("SELECT clock_timestamp()")
    # Recovery to a time stops at the first commit after it: one must follow.
    branch.execute("INSERT INTO events (label) VALUES ('t2c')")
    branch.wait_archived(branch.switch_wal())

    again, port2 = scenario.started("branch-pitr")
    done = scenario.world.cli(
        "pitr",
        "emr",
        "--target-time",
        after.isoformat(),
        "--pgdata",
        str(again.datadir),
        "--start",
        "--port",
        str(port2),
        "--json",
    )
    report = json.loads(done.stdout)
    assert report["wal"]["timeline"] == first["timeline"]
    assert report["wal"]["last"].startswith(f"{first['timeline']:08X}")
    assert labels(again) == ["t1", "t2", "t2b"]
    assert report["reached"]["timeline"] == first["timeline"] + 1


def test_a_target_never_reached_is_reported(scenario: Scenario) -> None:
    restored, port = scenario.started("unreached")
    done = scenario.world.cli(
        "pitr",
        "emr",
        "--target-xid",
        "99999999",
        "--target-timeline",
        "current",
        "--pgdata",
        str(restored.datadir),
        "--start",
        "--port",
        str(port),
        check=False,
    )
    assert done.returncode == EXIT_RECOVERY_FAILED, done.stderr
    assert "without reaching the recovery target" in done.stderr


def test_refuses_a_non_empty_directory_unless_forced(scenario: Scenario) -> None:
    target = scenario.world.base / "occupied"
    target.mkdir()
    (target / "stray").write_text("someone's file")
    as_postgres(target)
    done = scenario.restore(target, check=False)
    assert done.returncode == EXIT_RESTORE_TARGET
    assert "not empty" in done.stderr and "--delta" in done.stderr and "--force" in done.stderr
    assert os.listdir(target) == ["stray"]

    scenario.restore(target, "--force")
    assert not (target / "stray").exists()
    assert (target / "PG_VERSION").exists() and (target / "recovery.signal").exists()
    assert (target / "backup_label").read_text().startswith("START WAL LOCATION")
    assert (target / "pg_wal" / "archive_status").is_dir()
    assert (target.stat().st_mode & 0o777) == 0o700


def test_delta_rewrites_only_what_differs(scenario: Scenario) -> None:
    first = scenario.world.base / "delta-first"
    scenario.restore(first, "--recovery-target", "immediate")
    copy = scenario.world.base / "delta-copy"
    subprocess.run(["cp", "-a", str(first), str(copy)], check=True)
    conf = copy / "postgresql.conf"
    original = (first / "postgresql.conf").read_bytes()
    conf.write_bytes(original + b"work_mem = '64MB'\n")
    (copy / "base" / "stray-file").write_bytes(b"x" * 100)

    report = json.loads(scenario.restore(copy, "--delta", "--json").stdout)
    # postgresql.conf edited; postgresql.auto.conf carries the earlier recovery block;
    # pg_control is always written anew, last.
    assert report["files"] == 3, report
    assert report["files_unchanged"] > 500
    # The stray file, the earlier restore's backup_label and recovery.signal, and
    # pg_wal/archive_status when the backup left pg_wal empty (the restore makes it again).
    assert report["removed"] in (3, 4), report
    assert conf.read_bytes() == original
    assert not (copy / "base" / "stray-file").exists()
    assert (copy / "backup_label").exists() and (copy / "recovery.signal").exists()


def test_a_failed_restore_leaves_a_directory_that_cannot_be_started(
    scenario: Scenario,
) -> None:
    """Files are written in place, pg_control last: a restore that stops half-way (here: the
    disk fills) leaves no pg_control, so nobody can start the torn copy by mistake."""
    mount_point = scenario.world.base / "small-disk"
    mount_point.mkdir()
    entry = pwd.getpwnam("postgres")
    options = f"size=8m,uid={entry.pw_uid},gid={entry.pw_gid},mode=700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], check=True)
    try:
        target = mount_point / "pgdata"
        done = scenario.restore(target, check=False)
        assert done.returncode == EXIT_TARGET_FULL, done.stderr
        assert "no space left" in done.stderr
        assert (target / "PG_VERSION").exists()
        assert not (target / "global" / "pg_control").exists()
        assert not (target / "backup_label").exists()
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_delta_refuses_another_clusters_directory(scenario: Scenario) -> None:
    other = PgCluster(scenario.world.base / "other-cluster")
    other.initdb()
    control = (other.datadir / "global" / "pg_control").read_bytes()
    done = scenario.restore(other.datadir, "--delta", check=False)
    assert done.returncode == EXIT_RESTORE_TARGET
    assert "another cluster" in done.stderr and "system identifier" in done.stderr
    assert (other.datadir / "global" / "pg_control").read_bytes() == control
    assert not (other.datadir / "backup_label").exists()


def test_never_touches_a_running_servers_directory(scenario: Scenario) -> None:
    before = labels(scenario.cluster)
    for mode in ("--delta", "--force"):
        done = scenario.restore(scenario.cluster.datadir, mode, check=False)
        assert done.returncode == EXIT_RESTORE_TARGET
        assert "running PostgreSQL server" in done.stderr
    assert labels(scenario.cluster) == before


def test_refuses_a_port_in_use(scenario: Scenario) -> None:
    target = scenario.world.base / "port-taken"
    done = scenario.restore(target, "--start", "--port", str(scenario.cluster.port), check=False)
    assert done.returncode == EXIT_RESTORE_TARGET
    assert f"port {scenario.cluster.port} is in use" in done.stderr
    assert not target.exists()


def test_a_missing_wal_segment_in_the_range_is_refused(scenario: Scenario) -> None:
    archived = sorted((scenario.world.repo / "wal" / "emr" / "00000001").iterdir())
    segments = [p for p in archived if len(p.name) == 24]
    middle = segments[len(segments) // 2]
    aside = middle.with_name(middle.name + ".aside")
    middle.rename(aside)
    try:
        target = scenario.world.base / "gap"
        # The backup's own timeline: a later one might branch off before the gap.
        done = scenario.world.cli(
            "pitr",
            "emr",
            "--recovery-target",
            "latest",
            "--target-timeline",
            "current",
            "--pgdata",
            str(target),
            check=False,
        )
        assert done.returncode == EXIT_WAL_MISSING, done.stderr
        assert middle.name in done.stderr and "nothing was restored" in done.stderr
        assert not target.exists()
    finally:
        aside.rename(middle)


def test_target_time_before_the_oldest_backup_names_the_oldest_usable_time(
    scenario: Scenario,
) -> None:
    early = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    target = scenario.world.base / "too-early"
    done = scenario.world.cli(
        "pitr", "emr", "--target-time", early, "--pgdata", str(target), check=False
    )
    assert done.returncode == EXIT_SNAPSHOT_NOT_FOUND
    assert "oldest usable time" in done.stderr
    assert not target.exists()


def test_a_target_time_in_the_future_is_refused(scenario: Scenario) -> None:
    target = scenario.world.base / "future"
    done = scenario.restore(target, "--target-time", "2999-01-01T00:00:00+00:00", check=False)
    assert done.returncode == 2
    assert "in the future" in done.stderr
    assert not target.exists()


def test_a_target_time_after_the_last_archived_transaction_is_refused(scenario: Scenario) -> None:
    # Recovery to a time needs a transaction stamped later than it: t3 is the last archived.
    target = scenario.world.base / "after-archive"
    # In the past, and after t3 even when the fixture committed t3 an instant ago (a branch
    # an earlier test archived on timeline 2 committed seconds before now).
    moment = max(scenario.t3_at + timedelta(seconds=0.5), datetime.now(UTC) - timedelta(seconds=1))
    while datetime.now(UTC) < moment + timedelta(seconds=0.2):
        time.sleep(0.1)
    done = scenario.restore(target, "--target-time", moment.isoformat(), check=False)
    assert done.returncode == EXIT_WAL_MISSING, done.stderr
    assert "newest moment the archived WAL of emr reaches" in done.stderr
    assert "pg_switch_wal()" in done.stderr and "nothing was restored" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not target.exists()


def test_restore_as_root_refuses_to_start_the_server(scenario: Scenario, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            MEDVAULT,
            "--config",
            str(scenario.world.config),
            "restore",
            scenario.snapshot,
            "--pgdata",
            str(tmp_path / "as-root"),
            "--start",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "as root" in done.stderr
    assert not (tmp_path / "as-root").exists()


def test_pause_holds_recovery_at_the_target_read_only(scenario: Scenario) -> None:
    restored, port = scenario.started("paused")
    done = scenario.restore(
        restored.datadir,
        "--target-name",
        "between",
        "--target-action",
        "pause",
        "--start",
        "--port",
        str(port),
        "--json",
    )
    assert json.loads(done.stdout)["reached"]["state"] == "paused"
    assert restored.scalar("SELECT pg_is_in_recovery()") is True
    assert restored.scalar("SELECT pg_get_wal_replay_pause_state()") == "paused"
    assert labels(restored) == ["t1", "t2"]


def test_shutdown_stops_the_server_at_the_target(scenario: Scenario) -> None:
    restored, port = scenario.started("shutdown")
    done = scenario.restore(
        restored.datadir,
        "--target-name",
        "between",
        "--target-action",
        "shutdown",
        "--start",
        "--port",
        str(port),
        "--json",
    )
    assert json.loads(done.stdout)["reached"]["state"] == "shut down"
    assert not (restored.datadir / "postmaster.pid").exists()


def test_standby_follows_the_archive_without_promoting(scenario: Scenario) -> None:
    # The production timeline: another test may have promoted a branch into this archive, and a
    # standby of "latest" would follow that one instead.
    restored, port = scenario.started("standby")
    scenario.restore(
        restored.datadir,
        "--standby",
        "--target-timeline",
        "current",
        "--start",
        "--port",
        str(port),
    )
    assert (restored.datadir / "standby.signal").exists()
    assert restored.scalar("SELECT pg_is_in_recovery()") is True
    # Everything archived so far is replayed, t3 included, and WAL archived after the start too.
    scenario.cluster.execute("INSERT INTO events (label) VALUES ('t4')")
    scenario.cluster.wait_archived(scenario.cluster.switch_wal())
    wanted = labels(scenario.cluster)
    assert wanted[:4] == ["t1", "t2", "t3", "t4"]
    deadline = time.monotonic() + 60
    while labels(restored) != wanted and time.monotonic() < deadline:
        time.sleep(0.5)
    assert labels(restored) == wanted
    assert restored.scalar("SELECT pg_is_in_recovery()") is True
