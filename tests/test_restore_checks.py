"""Post-restore checks (`[source.NAME.restore] checks`) after a real logical restore into a
real PostgreSQL cluster, with the source's restore hooks around it: a passing check is in the
run's record, a failing one fails the run and names the check."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pgcluster import PgWorld, as_postgres, make_pg_tempdir, running_clusters


@pytest.fixture(scope="module")
def world() -> Iterator[PgWorld]:
    base = make_pg_tempdir()
    with running_clusters() as clusters:
        world = PgWorld(base, clusters)
        world.init_repository()
        world.cluster.initdb()
        world.write_config()
        world.cluster.start()
        world.cluster.execute("CREATE DATABASE emr")
        world.cluster.execute(
            "CREATE TABLE patients (id int PRIMARY KEY, name text);"
            "INSERT INTO patients SELECT g, 'Patient ' || g FROM generate_series(1, 3) g",
            "emr",
        )
        world.cli("backup", "emr", "--logical", "--database", "emr")
        yield world
    shutil.rmtree(base, ignore_errors=True)


def configure(world: PgWorld, checks: list[str], hooks: str = "") -> None:
    world.write_config(
        "\n[source.emr.restore]\nchecks = "
        + json.dumps(checks)
        + "\n"
        + (f"\n[source.emr.hooks]\n{hooks}\n" if hooks else "")
    )


def last_restore(world: PgWorld) -> dict[str, object]:
    runs = json.loads(world.cli("runs", "--operation", "restore", "--json").stdout)
    newest: dict[str, object] = runs[0]
    return newest


def test_passing_checks_are_run_in_the_restored_database_and_recorded(world: PgWorld) -> None:
    marker = world.base / "after-restore.txt"
    hook = world.base / "after-restore.sh"
    hook.write_text(f"#!/bin/sh\necho $MEDVAULT_TARGET $MEDVAULT_STATUS > {marker}\n")
    hook.chmod(0o755)
    as_postgres(hook)
    configure(
        world,
        ["SELECT count(*) = 3 FROM patients", "SELECT bool_and(name <> '') FROM patients"],
        f'after_restore = ["{hook}"]',
    )
    done = world.cli("restore", "latest:emr", "--database", "emr_ok", "--json")
    checks = json.loads(done.stdout)["checks"]
    assert [(c["name"], c["ok"]) for c in checks] == [
        ("check: SELECT count(*) = 3 FROM patients", True),
        ("check: SELECT bool_and(name <> '') FROM patients", True),
    ]
    assert marker.read_text() == "database emr_ok ok\n"
    record = last_restore(world)
    assert record["status"] == "ok"


def test_a_failing_check_fails_the_restore_and_names_the_check(world: PgWorld) -> None:
    configure(world, ["SELECT count(*) > 0 FROM patients", "SELECT count(*) > 10 FROM patients"])
    done = world.cli("restore", "latest:emr", "--database", "emr_bad", check=False)
    assert done.returncode == 31
    assert "FAIL check: SELECT count(*) > 10 FROM patients: returned False" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        "medvault: error: restore check: SELECT count(*) > 10 FROM patients failed: returned False"
    )
    assert world.cluster.scalar("SELECT count(*) FROM patients", "emr_bad") == 3, "data is back"
    record = last_restore(world)
    assert record["status"] == "failed"
    assert "SELECT count(*) > 10 FROM patients" in str(record["error"])


def test_a_check_that_errors_fails_with_the_servers_message(world: PgWorld) -> None:
    configure(world, ["SELECT count(*) > 0 FROM no_such_table"])
    done = world.cli("restore", "latest:emr", "--database", "emr_err", check=False)
    assert done.returncode == 31 and "no_such_table" in done.stderr


def test_a_list_restores_nothing_and_runs_no_check(world: PgWorld, tmp_path: Path) -> None:
    configure(world, ["SELECT false"])
    done = world.cli("restore", "latest:emr", "--list")
    assert "patients" in done.stdout
