"""Logical PostgreSQL backups: pg_dump -Fc streamed into the repository, pg_restore from it.

One throwaway cluster per module holds an EMR-like database; one backup of it, taken while
rows are being inserted, serves the restore tests. Every restore checks the restored row
counts against the counts recorded at backup, and the tests count again on their own.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from tests.pgcluster import PgWorld, as_postgres, free_port, make_pg_tempdir, running_clusters

PASSWORD = "S3cret-Dumper-pw-71"
WRONG = "Wrong-pw-guess-42"

SCHEMA_SQL = """
CREATE TABLE patients (
    id bigserial PRIMARY KEY, mrn text UNIQUE NOT NULL, name text NOT NULL, born date);
CREATE TABLE encounters (
    id bigserial PRIMARY KEY, patient_id bigint NOT NULL REFERENCES patients,
    at timestamptz NOT NULL DEFAULT now(), kind text);
CREATE TABLE notes (
    id bigserial PRIMARY KEY, encounter_id bigint NOT NULL REFERENCES encounters, body text);
CREATE TABLE prescriptions (
    id bigserial PRIMARY KEY, patient_id bigint NOT NULL REFERENCES patients,
    drug text, dose_mg numeric(8, 2));
CREATE TABLE vitals (patient_id bigint, at date NOT NULL, pulse int) PARTITION BY RANGE (at);
CREATE TABLE vitals_2023 PARTITION OF vitals FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE vitals_2024 PARTITION OF vitals FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id bigserial PRIMARY KEY, patient_id bigint, cents bigint);
CREATE TABLE billing.notes (id bigserial PRIMARY KEY, invoice_id bigint, body text);
INSERT INTO patients (mrn, name, born)
    SELECT 'MRN' || g, 'Patient ' || g, date '1940-01-01' + g FROM generate_series(1, 2000) g;
INSERT INTO encounters (patient_id, kind)
    SELECT 1 + g % 2000, 'visit' FROM generate_series(1, 6000) g;
-- Text that COPY has to escape: newlines, tabs, backslashes, quotes, non-ASCII.
INSERT INTO notes (encounter_id, body)
    SELECT g, E'Line one\\nline two\\twith tab \\\\ backslash "quoted" ' || repeat('é', g % 50)
    FROM generate_series(1, 6000) g;
INSERT INTO prescriptions (patient_id, drug, dose_mg)
    SELECT 1 + g % 2000, 'drug-' || g % 37, g % 500 FROM generate_series(1, 4000) g;
INSERT INTO vitals SELECT g % 2000, date '2023-01-01' + g % 700, 60 + g % 40
    FROM generate_series(1, 3000) g;
INSERT INTO billing.invoices (patient_id, cents)
    SELECT g % 2000, g * 100 FROM generate_series(1, 3000) g;
INSERT INTO billing.notes (invoice_id, body) SELECT g, 'billing note ' || g
    FROM generate_series(1, 1000) g;
-- A scanned document as a large object: its data block sits among the tables' blocks.
SELECT lo_from_bytea(0, convert_to(repeat('scan ', 1000), 'UTF8'));
"""


@dataclass
class Emr:
    world: PgWorld
    snapshot: str
    facts: dict[str, object]
    inserted_during_backup: int


def snapshot_count(world: PgWorld) -> int:
    folder = world.repo / "snapshots"
    return len(list(folder.iterdir())) if folder.exists() else 0


def live_counts(world: PgWorld, dbname: str) -> dict[str, int]:
    rows = world.cluster.query(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
        dbname,
    )
    return {
        name: int(world.cluster.scalar(f"SELECT count(*) FROM ONLY {name}", dbname))
        for (name,) in rows
    }


class Inserter(threading.Thread):
    """Adds encounters and notes, one committed transaction each, until stopped."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.done = threading.Event()
        self.inserted = 0

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.done.is_set():
                conn.execute(
                    "WITH e AS (INSERT INTO encounters (patient_id, kind) VALUES (7, 'er')"
                    " RETURNING id) INSERT INTO notes (encounter_id, body) SELECT id, 'live' FROM e"
                )
                self.inserted += 1


@pytest.fixture(scope="module")
def emr() -> Iterator[Emr]:
    base = make_pg_tempdir()
    with running_clusters() as clusters:
        world = PgWorld(base, clusters)
        world.init_repository()
        world.cluster.initdb()
        cluster = world.cluster
        world.write_config(
            f'\n[source.emr_pw]\nkind = "postgres"\ntier = "critical"\n'
            f'dsn = "host=127.0.0.1 port={cluster.port} dbname=emr user=dumper"\n'
            f'\n[source.emr_passfile]\nkind = "postgres"\n'
            f'dsn = "host=127.0.0.1 port={cluster.port} dbname=emr user=dumper'
            f' passfile={base / "dumper.pgpass"}"\n'
            f'\n[source.emr_nodb]\nkind = "postgres"\n'
            f'dsn = "host=127.0.0.1 port={cluster.port} dbname=emr_typo user=postgres"\n'
            f'\n[source.emr_limited]\nkind = "postgres"\n'
            f'dsn = "host=127.0.0.1 port={cluster.port} dbname=emr user=limited"\n'
            f'\n[source.emr_down]\nkind = "postgres"\n'
            f'dsn = "host=127.0.0.1 port={free_port()} dbname=emr user=postgres"\n'
        )
        # The dumper role must authenticate with a password; everyone else is trusted.
        hba = cluster.datadir / "pg_hba.conf"
        hba.write_text(
            "host all dumper 127.0.0.1/32 scram-sha-256\n" + hba.read_text(), encoding="utf-8"
        )
        cluster.start()
        cluster.execute("CREATE DATABASE emr")
        cluster.execute(SCHEMA_SQL, "emr")
        cluster.execute(f"CREATE ROLE dumper LOGIN PASSWORD '{PASSWORD}' IN ROLE pg_read_all_data")
        cluster.execute("CREATE ROLE limited LOGIN")
        # pg_read_all_data covers tables and sequences, not large objects.
        (scan,) = cluster.query("SELECT oid FROM pg_largeobject_metadata", "emr")[0]
        cluster.execute(f"GRANT SELECT ON LARGE OBJECT {scan} TO dumper", "emr")
        inserter = Inserter(cluster.dsn_for("emr"))
        inserter.start()
        while inserter.inserted < 50:
            time.sleep(0.01)
        before = inserter.inserted
        try:
            done = world.cli("backup", "emr", "--logical", "--database", "emr", "--json")
        finally:
            after = inserter.inserted
            time.sleep(0.2)
            inserter.done.set()
            inserter.join()
        result = json.loads(done.stdout)
        snap = json.loads(world.cli("snapshots", "--json").stdout)[0]
        yield Emr(world, result["snapshot"], snap["facts"], after - before)
    shutil.rmtree(base, ignore_errors=True)


def test_backup_records_facts_and_every_table(emr: Emr) -> None:
    facts = emr.facts
    assert facts["database"] == "emr"
    assert facts["dump_format"] == "custom"
    assert str(facts["pg_dump_version"]).startswith("pg_dump (PostgreSQL)")
    assert int(str(facts["server_version_num"])) >= 150000
    assert facts["system_identifier"]
    counts = facts["row_counts"]
    assert isinstance(counts, dict)
    # Partition leaves carry the rows; the partitioned parent holds none and is not listed.
    assert set(counts) == {
        "public.patients",
        "public.encounters",
        "public.notes",
        "public.prescriptions",
        "public.vitals_2023",
        "public.vitals_2024",
        "billing.invoices",
        "billing.notes",
    }
    assert counts["public.patients"] == 2000
    assert counts["public.vitals_2023"] + counts["public.vitals_2024"] == 3000


def test_counts_under_concurrent_inserts_equal_the_restored_dump(emr: Emr) -> None:
    """Rows kept arriving during the backup: the recorded counts are those of the dump's
    snapshot (more than before, fewer than now), and a restore holds exactly them."""
    assert emr.inserted_during_backup > 0
    recorded = emr.facts["row_counts"]
    assert isinstance(recorded, dict)
    assert 6000 < recorded["public.encounters"] < live_counts(emr.world, "emr")["public.encounters"]
    assert recorded["public.notes"] - 6000 == recorded["public.encounters"] - 6000
    done = emr.world.cli("restore", emr.snapshot, "--database", "emr_full")
    assert "counts match the backup" in done.stdout
    assert live_counts(emr.world, "emr_full") == recorded
    body = emr.world.cluster.scalar("SELECT body FROM notes WHERE id = 3", "emr_full")
    assert body == 'Line one\nline two\twith tab \\ backslash "quoted" ' + "é" * 3
    scan = emr.world.cluster.scalar(
        "SELECT length(lo_get(oid)) FROM pg_largeobject_metadata", "emr_full"
    )
    assert scan == 5000


def test_restore_one_table_by_bare_name(emr: Emr) -> None:
    done = emr.world.cli(
        "restore", emr.snapshot, "--database", "emr_rx", "--table", "prescriptions", "--json"
    )
    assert json.loads(done.stdout)["row_counts"] == {"public.prescriptions": 4000}
    assert live_counts(emr.world, "emr_rx") == {"public.prescriptions": 4000}


def test_restore_schema_qualified_table_takes_only_that_schema(emr: Emr) -> None:
    emr.world.cli("restore", emr.snapshot, "--database", "emr_bn", "--table", "billing.notes")
    # public.notes shares the name and stays out; the schema billing was created for it.
    assert live_counts(emr.world, "emr_bn") == {"billing.notes": 1000}


def test_restore_bare_name_takes_the_table_from_every_schema(emr: Emr) -> None:
    emr.world.cli("restore", emr.snapshot, "--database", "emr_notes", "--table", "notes")
    counts = live_counts(emr.world, "emr_notes")
    assert set(counts) == {"public.notes", "billing.notes"}
    assert counts["public.notes"] == emr.facts["row_counts"]["public.notes"]  # type: ignore[index]


def test_restore_schema(emr: Emr) -> None:
    emr.world.cli("restore", emr.snapshot, "--database", "emr_billing", "--schema", "billing")
    assert live_counts(emr.world, "emr_billing") == {
        "billing.invoices": 3000,
        "billing.notes": 1000,
    }


def test_restore_over_existing_tables_needs_clean(emr: Emr) -> None:
    world = emr.world
    world.cli("restore", emr.snapshot, "--database", "emr_clean", "--schema", "billing")
    world.cluster.execute("DELETE FROM billing.invoices WHERE id > 10", "emr_clean")
    refused = world.cli(
        "restore", emr.snapshot, "--database", "emr_clean", "--schema", "billing", check=False
    )
    assert refused.returncode == 16
    assert "already exists" in refused.stderr and "--clean" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    # The refused restore ran in one transaction: nothing changed.
    assert world.cluster.scalar("SELECT count(*) FROM billing.invoices", "emr_clean") == 10
    world.cli("restore", emr.snapshot, "--database", "emr_clean", "--schema", "billing", "--clean")
    assert live_counts(world, "emr_clean") == {"billing.invoices": 3000, "billing.notes": 1000}


def test_list_shows_contents_and_recorded_counts(emr: Emr) -> None:
    text = emr.world.cli("restore", emr.snapshot, "--list").stdout
    assert "TABLE DATA billing notes" in text
    assert "Row counts recorded at backup" in text
    assert "billing.invoices" in text and "3000" in text
    doc = json.loads(emr.world.cli("restore", emr.snapshot, "--list", "--json").stdout)
    assert doc["row_counts"] == emr.facts["row_counts"]
    assert any("TABLE public patients" in line for line in doc["toc"])


def test_unknown_table_is_refused_before_anything_is_created(emr: Emr) -> None:
    done = emr.world.cli(
        "restore", emr.snapshot, "--database", "emr_none", "--table", "nope", check=False
    )
    assert done.returncode == 4
    assert "table nope is not in snapshot" in done.stderr
    assert (
        emr.world.cluster.scalar("SELECT count(*) FROM pg_database WHERE datname = 'emr_none'") == 0
    )


def test_password_from_environment_reaches_pg_dump(emr: Emr) -> None:
    done = emr.world.cli("backup", "emr_pw", "--logical", env={"PGPASSWORD": PASSWORD})
    assert "database emr" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr


def write_pgpass(path: Path, password: str) -> Path:
    """A libpq password file owned by postgres, mode 600 (libpq ignores laxer ones)."""
    path.write_text(f"127.0.0.1:*:emr:dumper:{password}\n")
    path.chmod(0o600)
    as_postgres(path)
    return path


def test_password_from_a_file_named_in_the_dsn(emr: Emr) -> None:
    write_pgpass(emr.world.base / "dumper.pgpass", PASSWORD)
    done = emr.world.cli("backup", "emr_passfile", "--logical", "--json")
    assert json.loads(done.stdout)["database"] == "emr"
    assert PASSWORD not in done.stdout + done.stderr


def test_password_from_pgpassfile(emr: Emr) -> None:
    pgpass = write_pgpass(emr.world.base / "env.pgpass", PASSWORD)
    done = emr.world.cli("backup", "emr_pw", "--logical", env={"PGPASSFILE": str(pgpass)})
    assert "database emr" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr


def test_wrong_password_is_one_clear_line_and_no_snapshot(emr: Emr) -> None:
    before = snapshot_count(emr.world)
    done = emr.world.cli("backup", "emr_pw", "--logical", check=False, env={"PGPASSWORD": WRONG})
    assert done.returncode == 15
    assert "password authentication failed" in done.stderr
    assert "127.0.0.1" in done.stderr and "dumper" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert WRONG not in done.stdout + done.stderr
    assert snapshot_count(emr.world) == before


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("emr_down", "connection refused"),
        ("emr_nodb", 'database "emr_typo" does not exist'),
        # The role may connect but not read the tables: pg_dump itself fails.
        ("emr_limited", "permission denied"),
    ],
)
def test_a_failing_source_is_one_clear_line_and_no_snapshot(
    emr: Emr, source: str, reason: str
) -> None:
    before = snapshot_count(emr.world)
    done = emr.world.cli("backup", source, "--logical", check=False)
    assert done.returncode == 15
    assert reason in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert snapshot_count(emr.world) == before
