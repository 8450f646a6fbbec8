"""Restore checks and restore hooks around physical restores and `pitr`, against real
clusters: the checks run in the server a restore started (`--start`) and a failing one fails
the run naming it; without `--start` the output and the record say they were not run; the
source's before_restore/after_restore hooks run around `pitr` with a minimal environment,
and a failed after_restore hook makes it incomplete (exit 3)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pgcluster import (
    PgCluster,
    PgWorld,
    as_postgres,
    free_port,
    make_pg_tempdir,
    running_clusters,
)

EXIT_RESTORE_CHECK_FAILED = 31
EXIT_INCOMPLETE = 3


@pytest.fixture(scope="module")
def world() -> Iterator[PgWorld]:
    base = make_pg_tempdir("medvault-physchecks-")
    with running_clusters() as clusters:
        world = PgWorld(base, clusters)
        cluster = world.start_archiving_cluster()
        cluster.execute(
            "CREATE TABLE patients (id int PRIMARY KEY, name text);"
            "INSERT INTO patients SELECT g, 'Patient ' || g FROM generate_series(1, 3) g"
        )
        world.cli("backup", "emr", "--type", "full")
        cluster.wait_archived(cluster.switch_wal())
        yield world
    shutil.rmtree(base, ignore_errors=True)


def configure(world: PgWorld, checks: list[str], hooks: str = "") -> None:
    world.write_config(
        "\n[source.emr.restore]\nchecks = "
        + json.dumps(checks)
        + "\n"
        + (f"\n[source.emr.hooks]\n{hooks}\n" if hooks else "")
    )


def restored(world: PgWorld, name: str) -> tuple[PgCluster, int]:
    """A fresh data directory and free port, registered so the fixture stops its server."""
    port = free_port()
    cluster = PgCluster(world.base / name, port)
    world.clusters.append(cluster)
    return cluster, port


def pitr(
    world: PgWorld, cluster: PgCluster, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    return world.cli(
        "pitr",
        "emr",
        "--pgdata",
        str(cluster.datadir),
        "--recovery-target",
        "immediate",
        *args,
        check=check,
        env=env or None,
    )


def last_run(world: PgWorld, operation: str) -> dict[str, object]:
    runs = json.loads(world.cli("runs", "--operation", operation, "--json").stdout)
    newest: dict[str, object] = runs[0]
    return newest


def hook(world: PgWorld, name: str, body: str) -> Path:
    path = world.base / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    as_postgres(path)
    return path


def test_pitr_start_runs_the_checks_in_the_started_server(world: PgWorld) -> None:
    configure(world, ["SELECT count(*) = 3 FROM patients", "SELECT NOT pg_is_in_recovery()"])
    cluster, port = restored(world, "pitr-ok")
    done = pitr(world, cluster, "--start", "--port", str(port), "--json")
    report = json.loads(done.stdout)
    assert report["reached"]["state"] == "promoted"
    assert [(c["name"], c["ok"]) for c in report["checks"]] == [
        ("check: SELECT count(*) = 3 FROM patients", True),
        ("check: SELECT NOT pg_is_in_recovery()", True),
    ]
    assert report["checks_not_run"] is None
    record = last_run(world, "pitr")
    assert record["status"] == "ok"
    details = record["details"]
    assert isinstance(details, dict) and [c["ok"] for c in details["checks"]] == [True, True]


def test_pitr_a_failing_check_fails_the_run_and_names_the_check(world: PgWorld) -> None:
    configure(world, ["SELECT count(*) > 0 FROM patients", "SELECT count(*) > 10 FROM patients"])
    cluster, port = restored(world, "pitr-bad")
    done = pitr(world, cluster, "--start", "--port", str(port), check=False)
    assert done.returncode == EXIT_RESTORE_CHECK_FAILED
    assert "FAIL check: SELECT count(*) > 10 FROM patients: returned False" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        "medvault: error: restore check: SELECT count(*) > 10 FROM patients failed: returned False"
    )
    assert cluster.scalar("SELECT count(*) FROM patients") == 3, "the server runs, data is back"
    record = last_run(world, "pitr")
    assert record["status"] == "failed"
    assert "SELECT count(*) > 10 FROM patients" in str(record["error"])


def test_physical_restore_without_start_says_the_checks_were_not_run(world: PgWorld) -> None:
    configure(world, ["SELECT false"])
    cluster, _ = restored(world, "no-start")
    done = world.cli("restore", "latest:emr", "--pgdata", str(cluster.datadir))
    assert "restore checks not run: checks need --start" in done.stdout
    assert "1 restore check(s) of source emr not run: checks need --start" in done.stderr
    record = last_run(world, "restore")
    assert record["status"] == "ok"
    details = record["details"]
    assert isinstance(details, dict) and details["checks_not_run"] == "checks need --start"
    assert "checks" not in details


def test_physical_restore_start_runs_the_checks(world: PgWorld) -> None:
    configure(world, ["SELECT count(*) = 2 FROM patients"])
    cluster, port = restored(world, "restore-start")
    done = world.cli(
        "restore",
        "latest:emr",
        "--pgdata",
        str(cluster.datadir),
        "--start",
        "--port",
        str(port),
        check=False,
    )
    assert done.returncode == EXIT_RESTORE_CHECK_FAILED
    assert "FAIL check: SELECT count(*) = 2 FROM patients: returned False" in done.stdout
    assert last_run(world, "restore")["status"] == "failed"


def test_hooks_run_around_pitr_with_a_minimal_environment(world: PgWorld) -> None:
    before = world.base / "before.env"
    after = world.base / "after.env"
    first = hook(world, "before.sh", f"env > {before}")
    second = hook(world, "after.sh", f"env > {after}")
    configure(world, [], f'before_restore = ["{first}"]\nafter_restore = ["{second}"]')
    cluster, _ = restored(world, "pitr-hooks")
    pitr(
        world,
        cluster,
        AWS_SECRET_ACCESS_KEY="aws-secret-value",
        PGPASSWORD="pg-secret-value",
    )
    seen_before = dict(line.split("=", 1) for line in before.read_text().splitlines())
    seen_after = dict(line.split("=", 1) for line in after.read_text().splitlines())
    assert seen_before["MEDVAULT_HOOK"] == "before_restore"
    assert seen_after["MEDVAULT_HOOK"] == "after_restore"
    assert seen_after["MEDVAULT_SOURCE"] == "emr"
    assert seen_after["MEDVAULT_TARGET"] == str(cluster.datadir)
    assert seen_after["MEDVAULT_STATUS"] == "ok"
    assert seen_after["MEDVAULT_SNAPSHOT"] == seen_before["MEDVAULT_SNAPSHOT"]
    for text in (before.read_text(), after.read_text()):
        for secret in ("aws-secret-value", "pg-secret-value"):
            assert secret not in text
    record = last_run(world, "pitr")
    details = record["details"]
    assert isinstance(details, dict)
    assert [h["hook"] for h in details["hooks"]] == ["before_restore", "after_restore"]


def test_a_failed_after_restore_hook_makes_pitr_incomplete(world: PgWorld) -> None:
    failing = hook(world, "fail.sh", "echo cannot reach the ward system; exit 7")
    configure(world, [], f'after_restore = ["{failing}"]')
    cluster, _ = restored(world, "pitr-after-fails")
    done = pitr(world, cluster, check=False)
    assert done.returncode == EXIT_INCOMPLETE
    assert "after_restore hook" in done.stderr and "exit code 7" in done.stderr
    assert (cluster.datadir / "PG_VERSION").exists(), "the restored data stays"
    record = last_run(world, "pitr")
    assert record["status"] == "incomplete" and "exit code 7" in str(record["error"])


def test_a_failed_before_restore_hook_stops_pitr_before_anything_is_written(
    world: PgWorld,
) -> None:
    failing = hook(world, "before-fail.sh", "exit 5")
    configure(world, [], f'before_restore = ["{failing}"]')
    cluster, _ = restored(world, "pitr-before-fails")
    done = pitr(world, cluster, check=False)
    assert done.returncode == 30
    assert not (cluster.datadir / "PG_VERSION").exists()
    assert last_run(world, "pitr")["status"] == "failed"
