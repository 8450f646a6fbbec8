"""The PostgreSQL part of `make demo`: an EMR database with WAL archiving into medvault, a
full backup, a day of activity, an accidental `DELETE FROM prescriptions`, and point-in-time
recovery to the moment before it. Runs the real `medvault` command as the postgres user, as
a hospital would (PostgreSQL's archive_command calls it the same way)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pgcluster import (
    PgCluster,
    PgWorld,
    free_port,
    make_pg_tempdir,
    running_clusters,
)

SCHEMA = """
CREATE TABLE patients (
    id bigint PRIMARY KEY, mrn text UNIQUE NOT NULL, name text NOT NULL, born date NOT NULL);
CREATE TABLE encounters (
    id bigserial PRIMARY KEY, patient_id bigint REFERENCES patients, at timestamptz NOT NULL,
    department text NOT NULL);
CREATE TABLE clinical_notes (
    id bigserial PRIMARY KEY, encounter_id bigint REFERENCES encounters, body text NOT NULL);
CREATE TABLE prescriptions (
    id bigserial PRIMARY KEY, patient_id bigint REFERENCES patients, drug text NOT NULL,
    dose text NOT NULL, prescribed_at timestamptz NOT NULL DEFAULT now());
INSERT INTO patients
    SELECT g, 'MRN' || lpad(g::text, 7, '0'),
           (ARRAY['Okafor','Lindqvist','Nakamura','Moreau','Castillo','Haddad'])[1 + g % 6]
           || ', patient ' || g, date '1940-01-01' + (g * 37) % 30000
    FROM generate_series(1, 5000) g;
INSERT INTO encounters (patient_id, at, department)
    SELECT 1 + g % 5000, now() - (g || ' minutes')::interval,
           (ARRAY['cardiology','oncology','emergency','pediatrics'])[1 + g % 4]
    FROM generate_series(1, 40000) g;
INSERT INTO clinical_notes (encounter_id, body)
    SELECT g, 'Seen in clinic. ' || repeat('Vitals stable, plan reviewed with patient. ', 8)
    FROM generate_series(1, 40000) g;
INSERT INTO prescriptions (patient_id, drug, dose)
    SELECT 1 + g % 5000, (ARRAY['metformin','lisinopril','atorvastatin','amoxicillin'])[1 + g % 4],
           (1 + g % 4) * 250 || ' mg'
    FROM generate_series(1, 12000) g;
"""


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def medvault(world: PgWorld, *args: str) -> str:
    print(f"$ medvault {' '.join(args)}", flush=True)
    done = world.cli(*args, check=False)
    if done.stdout:
        print(done.stdout.rstrip())
    if done.returncode != 0:
        print(done.stderr.rstrip(), file=sys.stderr)
        raise SystemExit(f"demo failed: medvault {args[0]} exited {done.returncode}")
    return done.stdout


def sql(cluster: PgCluster, statement: str) -> object:
    value = cluster.scalar(statement, dbname="emr")
    print(f"emr=# {statement}\n{value}")
    return value


def main() -> None:
    base = make_pg_tempdir("medvault-demo-pg-")
    try:
        with running_clusters() as clusters:
            run(PgWorld(base, clusters))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(world: PgWorld) -> None:
    say("A throwaway PostgreSQL cluster with data checksums, archiving WAL into medvault")
    cluster = world.start_archiving_cluster(checksums=True)
    print(f"archive_command = {world.archive_command()}")
    print(world.config.read_text().rstrip())
    cluster.execute("CREATE DATABASE emr")
    with cluster.connect("emr") as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
    sql(cluster, "SELECT count(*) FROM prescriptions")

    say("A full physical backup (pg_backup_start/stop around the data directory)")
    medvault(world, "backup", "emr", "--type", "full")

    say("A logical dump of the EMR database, with row counts taken in the dump's snapshot")
    medvault(world, "backup", "emr", "--logical", "--database", "emr")

    say("A morning of activity: 300 new prescriptions")
    cluster.execute(
        "INSERT INTO prescriptions (patient_id, drug, dose) "
        "SELECT 1 + g % 5000, 'apixaban', '5 mg' FROM generate_series(1, 300) g",
        dbname="emr",
    )
    before = sql(cluster, "SELECT count(*) FROM prescriptions")
    time.sleep(1.5)
    moment = str(cluster.scalar("SELECT now()"))
    print(f"-- the last good moment: {moment}")
    time.sleep(1.5)

    say("An accident: someone runs DELETE FROM prescriptions without a WHERE")
    cluster.execute("DELETE FROM prescriptions", dbname="emr")
    sql(cluster, "SELECT count(*) FROM prescriptions")
    cluster.wait_archived(cluster.switch_wal())
    medvault(world, "wal-status", "emr")

    say("Point-in-time recovery to the moment before the DELETE, into a new data directory")
    target = world.new_cluster("recovered")
    target.port = free_port()
    medvault(
        world,
        "pitr",
        "emr",
        "--target-time",
        moment,
        "--pgdata",
        str(target.datadir),
        "--start",
        "--port",
        str(target.port),
    )
    recovered = target.scalar("SELECT count(*) FROM prescriptions", dbname="emr")
    print(f"recovered cluster: SELECT count(*) FROM prescriptions\n{recovered}")
    if recovered != before:
        raise SystemExit(f"demo failed: expected {before} prescriptions, found {recovered}")
    print(f"all {recovered} prescriptions are back; production can copy them from here")

    say("Or, with production running on: only that table, as of that moment, into a new table")
    medvault(
        world,
        "restore-table",
        "emr",
        "public.prescriptions",
        "--as-of",
        moment,
        "--into",
        "public.prescriptions_restored",
        "--database",
        "emr",
        "--reason",
        "DELETE without WHERE, ticket 4711",
    )
    copied = sql(cluster, "SELECT count(*) FROM prescriptions_restored")
    if copied != before:
        raise SystemExit(f"demo failed: expected {before} restored rows, found {copied}")

    say("Every backup, and the WAL archive, checked byte by byte")
    medvault(world, "snapshots")
    medvault(world, "check", "--read-data")

    say("A restore drill: the backup restored into a throwaway cluster, all WAL replayed")
    world.write_config(
        '[source.emr.drill]\ndatabase = "emr"\n'
        'checks = ["SELECT count(*) = 5000 FROM patients", '
        '"SELECT count(*) = 0 FROM prescriptions"]\n'
    )
    print(world.config.read_text().split("[source.emr.drill]")[1].strip())
    medvault(world, "drill", "emr", "--to-latest")
    print("(the copy replayed the WAL through the DELETE: the chain reaches the newest WAL)")

    say("Status: each source against its tier's RPO and RTO")
    medvault(world, "status")
    say("PostgreSQL demo finished")


if __name__ == "__main__":
    main()
