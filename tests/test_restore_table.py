"""One table as of a moment (`restore-table`), against a real archiving cluster: tables
damaged, dropped and truncated after a moment come back as they were then, under a new name,
while the damaged table and the rest of the database are left as they are; and one table of a
logical snapshot restored under a new name (`restore SNAP --table T --into NEW`).

One cluster and one base backup serve the module; every restore-table run uses a scratch
root of the module's own, which must be empty (and no throwaway server running) after each.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tests.faultpoints import Pause, faults_env
from tests.pgcluster import (
    MEDVAULT,
    PgCluster,
    PgWorld,
    as_postgres,
    make_pg_tempdir,
    popen_as_postgres,
    run_as_postgres,
    running_clusters,
)

EXIT_SNAPSHOT_NOT_FOUND = 4
EXIT_RESTORE_TARGET = 16

KLINIK = '"Klinik"."Verordnungen_ä"'
PRESCRIPTIONS = "SELECT id, patient, drug, dose, note FROM {} ORDER BY id"
VERORDNUNGEN = 'SELECT "Nr", "Wirkstoff" FROM {} ORDER BY "Nr"'


@dataclass
class Scenario:
    world: PgWorld
    cluster: PgCluster
    scratch: Path
    before: str  # a moment after the backup and before the damage
    before_rows: dict[str, list[Any]]  # each table's rows at that moment
    backup_taken: datetime

    def restore_table(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = self.world.cli(
            "restore-table", "emr", *args, "--scratch", str(self.scratch), check=check
        )
        assert not list(self.scratch.iterdir()), "the scratch copy is gone"
        leftover = subprocess.run(
            ["pgrep", "-f", f"postgres -D {self.scratch}/"], capture_output=True, check=False
        )
        assert leftover.returncode == 1, "no throwaway server is left running"
        return done


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    base = make_pg_tempdir("medvault-table-")
    with running_clusters() as clusters:
        world = PgWorld(base, clusters)
        cluster = world.start_archiving_cluster()
        cluster.execute(
            "CREATE TABLE prescriptions (id serial PRIMARY KEY, patient text NOT NULL,"
            ' drug text, dose numeric(6,2) NOT NULL DEFAULT 1.0, note text COLLATE "C",'
            " at timestamptz DEFAULT now());"
            "CREATE TABLE dropped (id int, label text); CREATE TABLE truncated (id int);"
            'CREATE SCHEMA "Klinik";'
            'CREATE TABLE "Klinik"."Verordnungen_ä" ("Nr" int, "Wirkstoff" text);'
            "CREATE INDEX ON prescriptions (patient)"
        )
        cluster.execute(
            "INSERT INTO prescriptions (patient, drug, dose, note)"
            " SELECT 'p' || g, 'drug ' || g, g / 10.0, CASE WHEN g % 7 = 0 THEN NULL"
            " ELSE E'line\\ttab \"q\", ' || g END FROM generate_series(1, 300) g;"
            "INSERT INTO dropped SELECT g, 'd' || g FROM generate_series(1, 40) g;"
            "INSERT INTO truncated SELECT generate_series(1, 25);"
            "INSERT INTO \"Klinik\".\"Verordnungen_ä\" VALUES (1, 'Ibuprofen'), (2, 'Metamizol')"
        )
        taken = cluster.scalar("SELECT now()")
        world.cli("backup", "emr", "--type", "full")
        # Rows committed after the backup: the copy has to replay WAL to have them.
        cluster.execute(
            "INSERT INTO prescriptions (patient, drug) VALUES ('late', 'after the backup');"
            "INSERT INTO truncated VALUES (26)"
        )
        cluster.switch_wal()
        rows = {
            "prescriptions": cluster.query(PRESCRIPTIONS.format("prescriptions")),
            "dropped": cluster.query("SELECT id, label FROM dropped ORDER BY id"),
            "truncated": cluster.query("SELECT id FROM truncated ORDER BY id"),
            "klinik": cluster.query(VERORDNUNGEN.format(KLINIK)),
        }
        before = cluster.scalar("SELECT clock_timestamp()")
        time.sleep(0.3)
        cluster.execute(
            "UPDATE prescriptions SET drug = 'WRONG', dose = 0;"
            "DROP TABLE dropped; TRUNCATE truncated;"
            'UPDATE "Klinik"."Verordnungen_ä" SET "Wirkstoff" = \'falsch\''
        )
        cluster.execute("CREATE TABLE later (id int)")  # a commit after the damage
        cluster.wait_archived(cluster.switch_wal())
        scratch = base / "scratch"
        scratch.mkdir()
        as_postgres(scratch)
        yield Scenario(world, cluster, scratch, before.isoformat(), rows, taken)
    shutil.rmtree(base, ignore_errors=True)


def test_a_damaged_table_comes_back_under_a_new_name_and_the_damaged_one_is_untouched(
    scenario: Scenario,
) -> None:
    cluster = scenario.cluster
    done = scenario.restore_table(
        "public.prescriptions",
        "--as-of",
        scenario.before,
        "--into",
        "public.prescriptions_restored",
        "--reason",
        "INC-77",
        "--json",
    )
    report = json.loads(done.stdout)
    assert report["rows"] == 301 and report["into"] == "public.prescriptions_restored"
    reached = datetime.fromisoformat(report["reached"]["time"])
    assert reached <= datetime.fromisoformat(scenario.before)  # the last commit before the moment
    assert report["left_out_defaults"] == ["id"]  # nextval of production's sequence
    restored = cluster.query(PRESCRIPTIONS.format("prescriptions_restored"))
    assert restored == scenario.before_rows["prescriptions"]
    assert cluster.scalar("SELECT count(*) FROM prescriptions WHERE drug <> 'WRONG'") == 0
    # Columns and types, NOT NULL and simple defaults; no index, constraint or trigger.
    columns = cluster.query(
        "SELECT column_name, data_type, is_nullable, column_default, collation_name"
        " FROM information_schema.columns WHERE table_name = 'prescriptions_restored'"
        " ORDER BY ordinal_position"
    )
    assert columns == [
        ("id", "integer", "NO", None, None),
        ("patient", "text", "NO", None, None),
        ("drug", "text", "YES", None, None),
        ("dose", "numeric", "NO", "1.0", None),
        ("note", "text", "YES", None, "C"),
        ("at", "timestamp with time zone", "YES", "now()", None),
    ]
    assert (
        cluster.scalar("SELECT count(*) FROM pg_indexes WHERE tablename = 'prescriptions_restored'")
        == 0
    )
    assert (
        cluster.scalar(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'prescriptions_restored'::regclass"
        )
        == 0
    )
    # The run is recorded with the recovery point the copy reached.
    runs = json.loads(scenario.world.cli("runs", "--operation", "restore-table", "--json").stdout)
    ok = [r for r in runs if r["status"] == "ok" and r["details"].get("reason") == "INC-77"]
    assert len(ok) == 1
    assert report["reached"]["time"] in ok[0]["recovery_point"]
    assert ok[0]["destination"] == "table public.prescriptions_restored in database postgres"
    assert ok[0]["justification"] == "INC-77" and ok[0]["source"] == "emr"


def test_a_table_dropped_after_the_moment_comes_back_under_its_own_name(
    scenario: Scenario,
) -> None:
    cluster = scenario.cluster
    done = scenario.restore_table("dropped", "--as-of", scenario.before, "--into", "dropped")
    assert (
        "40 rows" in done.stdout and "recovery point: last transaction replayed at" in done.stdout
    )
    assert (
        cluster.query("SELECT id, label FROM dropped ORDER BY id")
        == scenario.before_rows["dropped"]
    )
    cluster.execute("DROP TABLE dropped")


def test_a_table_truncated_after_the_moment(scenario: Scenario) -> None:
    scenario.restore_table(
        "public.truncated", "--as-of", scenario.before, "--into", "public.truncated_then"
    )
    rows = scenario.cluster.query("SELECT id FROM truncated_then ORDER BY id")
    assert rows == scenario.before_rows["truncated"] and len(rows) == 26
    assert scenario.cluster.scalar("SELECT count(*) FROM truncated") == 0


def test_a_quoted_non_ascii_table_in_its_own_schema(scenario: Scenario) -> None:
    into = '"Klinik"."Verordnungen_ä vorher"'
    report = json.loads(
        scenario.restore_table(KLINIK, "--as-of", scenario.before, "--into", into, "--json").stdout
    )
    assert report["table"] == KLINIK and report["into"] == into and report["rows"] == 2
    assert scenario.cluster.query(VERORDNUNGEN.format(into)) == scenario.before_rows["klinik"]
    assert scenario.cluster.query(VERORDNUNGEN.format(KLINIK)) == [(1, "falsch"), (2, "falsch")]


def test_to_file_as_csv(scenario: Scenario) -> None:
    path = scenario.world.base / "prescriptions.csv"
    done = scenario.restore_table(
        "prescriptions", "--as-of", scenario.before, "--to-file", str(path), "--json"
    )
    assert json.loads(done.stdout)["rows"] == 301
    assert path.stat().st_mode & 0o777 == 0o600
    with path.open(newline="", encoding="utf-8") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["id", "patient", "drug", "dose", "note", "at"]
    want = scenario.before_rows["prescriptions"]
    got = [(int(r[0]), r[1], r[2] or None, r[3], r[4] if r[4] != "" else None) for r in lines[1:]]
    assert got == [(i, p, d, str(dose), n) for i, p, d, dose, n in want]
    again = scenario.restore_table(
        "prescriptions", "--as-of", scenario.before, "--to-file", str(path), check=False
    )
    assert again.returncode == EXIT_RESTORE_TARGET and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_to_file_in_custom_format_loads_with_pg_restore(scenario: Scenario) -> None:
    cluster = scenario.cluster
    path = scenario.world.base / "verordnungen.dump"
    scenario.restore_table(
        KLINIK, "--as-of", scenario.before, "--to-file", str(path), "--format", "custom"
    )
    assert path.stat().st_mode & 0o777 == 0o600
    cluster.execute("CREATE DATABASE loaded")
    # pg_dump -t dumps the table alone, not its schema (as pg_dump always does).
    cluster.execute('CREATE SCHEMA "Klinik"', dbname="loaded")
    run_as_postgres(
        [
            str(cluster.bindir / "pg_restore"),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-d",
            "loaded",
            "--exit-on-error",
            str(path),
        ]
    )
    rows = cluster.query(VERORDNUNGEN.format(KLINIK), dbname="loaded")
    assert rows == scenario.before_rows["klinik"]


def test_an_existing_name_is_refused_before_anything_is_restored(scenario: Scenario) -> None:
    done = scenario.restore_table(
        "prescriptions", "--as-of", scenario.before, "--into", "prescriptions", check=False
    )
    assert done.returncode == EXIT_RESTORE_TARGET, done.stderr
    assert done.stderr.strip().splitlines() == [
        "medvault: error: public.prescriptions already exists in database postgres; choose a "
        "new name with --into (an existing table is never replaced)"
    ]
    assert "base backup" not in done.stdout


def test_a_moment_before_the_first_backup_is_refused_in_one_line(scenario: Scenario) -> None:
    early = scenario.backup_taken.replace(year=scenario.backup_taken.year - 1).isoformat()
    done = scenario.restore_table(
        "prescriptions", "--as-of", early, "--into", "p_early", check=False
    )
    assert done.returncode == EXIT_SNAPSHOT_NOT_FOUND
    (line,) = done.stderr.strip().splitlines()
    assert "no backup of emr reaches back to" in line and "give a later --as-of" in line


def test_a_table_missing_at_that_moment_is_one_line_and_leaves_nothing(
    scenario: Scenario,
) -> None:
    # `later` was created after the moment: the recovered copy does not hold it.
    done = scenario.restore_table(
        "later", "--as-of", scenario.before, "--into", "later_then", check=False
    )
    assert done.returncode == EXIT_SNAPSHOT_NOT_FOUND, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("medvault: error: table public.later did not exist at ")
    assert scenario.cluster.scalar("SELECT to_regclass('later_then')") is None
    failed = json.loads(
        scenario.world.cli("runs", "--operation", "restore-table", "--failed", "--json").stdout
    )
    assert any("did not exist" in (r["error"] or "") for r in failed)


def test_ctrl_c_while_the_copy_runs_stops_the_server_and_removes_the_scratch(
    scenario: Scenario,
) -> None:
    world = scenario.world
    pause = Pause(world.base / "pause", "drill.server-running")
    as_postgres(pause.folder)
    command = [MEDVAULT, "--config", str(world.config), "restore-table", "emr", "prescriptions"]
    command += ["--as-of", scenario.before, "--into", "interrupted"]
    command += ["--scratch", str(scenario.scratch)]
    proc = popen_as_postgres(command, world.cli.env | faults_env(**{pause.name: pause.action}))
    try:
        pause.wait(proc)
        assert any(scenario.scratch.rglob("postmaster.pid")), "the scratch server runs"
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    finally:
        pause.release()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert not list(scenario.scratch.iterdir()), "the scratch copy is gone"
    leftover = subprocess.run(
        ["pgrep", "-f", f"postgres -D {scenario.scratch}/"], capture_output=True, check=False
    )
    assert leftover.returncode == 1, "no throwaway server is left running"
    assert scenario.cluster.scalar("SELECT to_regclass('interrupted')") is None


def test_bad_names_and_options_are_one_line(scenario: Scenario) -> None:
    for args, message in [
        (("prescriptions", "--as-of", scenario.before), "--into SCHEMA.NEW_TABLE or --to-file"),
        (('"open', "--as-of", scenario.before, "--into", "x"), "is not closed"),
        (("a.b.c", "--as-of", scenario.before, "--into", "x"), "give SCHEMA.TABLE"),
        (("t", "--as-of", "yesterday", "--into", "x"), "--as-of 'yesterday' is not a time"),
        (("t", "--as-of", scenario.before, "--into", "x", "--format", "csv"), "--to-file only"),
    ]:
        done = scenario.restore_table(*args, check=False)
        assert done.returncode == 2, (args, done.stderr)
        (line,) = done.stderr.strip().splitlines()
        assert message in line, (args, line)


def test_one_table_of_a_logical_snapshot_under_a_new_name(pg_world: PgWorld) -> None:
    world = pg_world
    cluster = world.start_archiving_cluster()
    cluster.execute(
        'CREATE SCHEMA "Klinik"; CREATE TABLE "Klinik"."Verordnungen_ä" ("Nr" int PRIMARY KEY,'
        ' "Wirkstoff" text NOT NULL); INSERT INTO "Klinik"."Verordnungen_ä"'
        " SELECT g, 'w' || g FROM generate_series(1, 120) g;"
        "CREATE TABLE other (id int); INSERT INTO other VALUES (1)"
    )
    snapshot = json.loads(world.cli("backup", "emr", "--logical", "--json").stdout)["snapshot"]
    cluster.execute('UPDATE "Klinik"."Verordnungen_ä" SET "Wirkstoff" = \'falsch\'')
    into = '"Klinik"."Verordnungen_ä_backup"'
    done = world.cli(
        "restore", snapshot, "--table", "Klinik.Verordnungen_ä", "--into", into, "--json"
    )
    report = json.loads(done.stdout)
    assert report["into"] == into and report["rows"] == 120 and report["database"] == "postgres"
    rows = cluster.query(VERORDNUNGEN.format(into))
    assert rows == [(g, f"w{g}") for g in range(1, 121)]
    assert (
        cluster.scalar(
            'SELECT count(*) FROM "Klinik"."Verordnungen_ä" WHERE "Wirkstoff" = \'falsch\''
        )
        == 120
    )
    databases = [r[0] for r in cluster.query("SELECT datname FROM pg_database")]
    assert not any(name.startswith("medvault_drill_") for name in databases)
    again = world.cli(
        "restore", snapshot, "--table", "Klinik.Verordnungen_ä", "--into", into, check=False
    )
    assert again.returncode == EXIT_RESTORE_TARGET and "already exists" in again.stderr
    two = world.cli(
        "restore", snapshot, "--table", "other", "--table", "x", "--into", "y", check=False
    )
    assert two.returncode == 2 and "exactly one --table" in two.stderr
