"""Per-table exports: logical backups of named tables (pg_dump's -t / -T patterns, from the
command line or the source's config) and CSV exports (one file per table in one snapshot),
restored with COPY FROM into a database or written out as files.

One throwaway cluster per module holds a small EMR database with a non-default schema and a
quoted, non-ASCII table name; one CSV export of it serves the CSV restore tests.
"""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tests.pgcluster import PgWorld, make_pg_tempdir, running_clusters

from medvault.config import Settings
from medvault.errors import IntegrityError, UsageError
from medvault.postgres.facts import CsvFacts, LogicalFacts
from medvault.postgres.patterns import _regexes

UMLAUT = "Rechnungsübersicht"  # billing."Rechnungsübersicht": quoted, mixed case, non-ASCII

SCHEMA_SQL = f"""
CREATE TABLE patients (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE prescriptions (
    id bigserial PRIMARY KEY, patient_id bigint REFERENCES patients, drug text,
    dose_mg numeric(8, 2));
CREATE TABLE audit_log (id bigserial PRIMARY KEY, what text);
CREATE TABLE typed (
    id int PRIMARY KEY, note text, at timestamptz, amount numeric(14, 4), scan bytea,
    flag boolean, day date, doc jsonb, ratio double precision);
CREATE SCHEMA billing;
CREATE TABLE billing."{UMLAUT}" (id int, betrag numeric(10, 2), "Bemerkung" text);
CREATE TABLE billing.invoices (id int);
INSERT INTO patients (name) SELECT 'Patient ' || g FROM generate_series(1, 300) g;
INSERT INTO prescriptions (patient_id, drug, dose_mg)
    SELECT 1 + g % 300, 'drug-' || g % 17, g % 500 FROM generate_series(1, 700) g;
INSERT INTO audit_log (what) SELECT 'event ' || g FROM generate_series(1, 50) g;
INSERT INTO billing."{UMLAUT}" VALUES (1, 10.50, 'Grüße'), (2, NULL, NULL), (3, 0, '');
INSERT INTO billing.invoices SELECT g FROM generate_series(1, 20) g;
-- What CSV must carry exactly: NULL apart from '', quotes, commas, newlines, a backslash,
-- times with their zone, exact numerics, binary with a zero byte, JSON, floats.
INSERT INTO typed VALUES
    (1, 'plain', '2026-03-01 10:13:00+00', 12.3456, '\\x00ff10', true, '2026-03-01',
     '{{"a": [1, "x,y"]}}', 0.1),
    (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (3, '', '1999-12-31 23:59:59.999999-08', -0.0001, '\\x', false, '1900-02-28', 'null',
     1e-300),
    (4, E'line one\\nline two, "quoted"\\r\\n\\\\ back', '2026-03-01 10:13:00+05:30',
     99999999.9999, '\\x0a0d2c22', NULL, NULL, '"text"', -2.5),
    (5, 'Grüße, 東京', '2026-07-01 00:00:00+02', 0, '\\x', true, '2026-07-01', '[]', 1.0);
"""


@dataclass
class Tables:
    world: PgWorld
    csv_snapshot: str
    csv_facts: dict[str, Any]


def snapshot_count(world: PgWorld) -> int:
    folder = world.repo / "snapshots"
    return len(list(folder.iterdir())) if folder.exists() else 0


def table_names(world: PgWorld, dbname: str) -> set[str]:
    rows = world.cluster.query(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
        dbname,
    )
    return {name for (name,) in rows}


def rows_of(world: PgWorld, dbname: str, table: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in world.cluster.query(f"SELECT * FROM {table} ORDER BY 1", dbname)]


def column_types(world: PgWorld, dbname: str, table: str) -> list[tuple[str, str]]:
    rows = world.cluster.query(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        dbname,
        (table,),
    )
    return [(r[0], r[1]) for r in rows]


@pytest.fixture(scope="module")
def tables() -> Iterator[Tables]:
    base = make_pg_tempdir()
    with running_clusters() as clusters:
        world = PgWorld(base, clusters)
        world.init_repository()
        world.cluster.initdb()
        world.cluster.start()
        dsn = f"host=127.0.0.1 port={world.cluster.port} dbname=emr user=postgres"
        world.write_config(
            f'\n[source.emr_sel]\nkind = "postgres"\ndsn = "{dsn}"\n'
            'tables = ["public.*", \'billing."' + UMLAUT + "\"']\n"
            'exclude_tables = ["public.audit_log"]\n'
            f'\n[source.rx]\nkind = "postgres-csv"\ndsn = "{dsn}"\n'
            'tables = ["public.typed", \'billing."' + UMLAUT + "\"']\n"
        )
        world.cluster.execute("CREATE DATABASE emr")
        world.cluster.execute(SCHEMA_SQL, "emr")
        done = world.cli("backup", "rx", "--json")
        snapshot = json.loads(done.stdout)["snapshot"]
        listed = json.loads(world.cli("snapshots", "--json").stdout)
        facts = next(s["facts"] for s in listed if s["id"] == snapshot)
        yield Tables(world, snapshot, facts)
    shutil.rmtree(base, ignore_errors=True)


def logical(world: PgWorld, *args: str) -> dict[str, Any]:
    done = world.cli("backup", *args, "--logical", "--json")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- named tables in a pg_dump --------------------------------------------------------------


def test_backup_of_two_named_tables_holds_only_them(tables: Tables) -> None:
    world = tables.world
    result = logical(
        world,
        "emr",
        "--database",
        "emr",
        "--table",
        "public.patients",
        "--table",
        f'billing."{UMLAUT}"',
    )
    assert result["row_counts"] == {"public.patients": 300, f"billing.{UMLAUT}": 3}
    listed = json.loads(world.cli("snapshots", "--json").stdout)
    facts = next(s["facts"] for s in listed if s["id"] == result["snapshot"])
    assert facts["tables"] == ["public.patients", f'billing."{UMLAUT}"']
    toc = world.cli("restore", result["snapshot"], "--list").stdout
    data = [line for line in toc.splitlines() if "TABLE DATA" in line]
    assert len(data) == 2 and not any("prescriptions" in line or "audit" in line for line in data)
    # The dump holds no CREATE SCHEMA billing: the restore makes the schema itself.
    world.cli("restore", result["snapshot"], "--database", "emr_two")
    assert table_names(world, "emr_two") == {"public.patients", f"billing.{UMLAUT}"}
    assert rows_of(world, "emr_two", f'billing."{UMLAUT}"') == rows_of(
        world, "emr", f'billing."{UMLAUT}"'
    )


def test_exclude_table_leaves_it_out(tables: Tables) -> None:
    result = logical(tables.world, "emr", "--database", "emr", "--exclude-table", "audit_log")
    counts = result["row_counts"]
    assert "public.audit_log" not in counts
    assert counts["public.patients"] == 300 and counts["billing.invoices"] == 20
    listed = json.loads(tables.world.cli("snapshots", "--json").stdout)
    facts = next(s["facts"] for s in listed if s["id"] == result["snapshot"])
    assert facts["exclude_tables"] == ["audit_log"] and "tables" not in facts


def test_source_config_names_the_tables_and_the_command_line_excludes_more(
    tables: Tables,
) -> None:
    world = tables.world
    assert set(logical(world, "emr_sel")["row_counts"]) == {
        "public.patients",
        "public.prescriptions",
        "public.typed",
        f"billing.{UMLAUT}",
    }
    narrower = logical(world, "emr_sel", "--exclude-table", "public.typ?d")
    assert set(narrower["row_counts"]) == {
        "public.patients",
        "public.prescriptions",
        f"billing.{UMLAUT}",
    }
    # --table replaces the configured tables.
    only = logical(world, "emr_sel", "--table", "billing.invoices")
    assert only["row_counts"] == {"billing.invoices": 20}


@pytest.mark.parametrize(
    ("flag", "pattern", "message"),
    [
        ("--table", "public.nope", "table pattern public.nope matches no table in database emr"),
        # Unquoted names fold to lower case: this is billing.rechnungsübersicht.
        ("--table", f"billing.{UMLAUT}", "matches no table"),
        ("--exclude-table", "public.gone", "exclude-table pattern public.gone matches no table"),
    ],
)
def test_a_pattern_matching_nothing_is_refused_in_one_line(
    tables: Tables, flag: str, pattern: str, message: str
) -> None:
    world = tables.world
    before = snapshot_count(world)
    done = world.cli("backup", "emr", "--logical", "--database", "emr", flag, pattern, check=False)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert snapshot_count(world) == before


def test_table_options_need_a_logical_backup(tables: Tables) -> None:
    done = tables.world.cli("backup", "emr", "--table", "patients", check=False)
    assert done.returncode == 2
    assert "apply to logical backups (--logical)" in done.stderr


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("public.prescriptions", ["^(public)$", "^(prescriptions)$"]),
        (f'billing."{UMLAUT}"', ["^(billing)$", f"^({UMLAUT})$"]),
        ("Audit_*", ["^(audit_.*)$"]),
        ('"a.b"."x*y"', ["^(a\\.b)$", "^(x\\*y)$"]),
        ('"say ""hi"""', ['^(say "hi")$']),
        ("pay$day", ["^(pay\\$day)$"]),
        ("emr.public.t?", ["^(emr)$", "^(public)$", "^(t.)$"]),
    ],
)
def test_patterns_read_as_pg_dump_reads_them(pattern: str, expected: list[str]) -> None:
    assert _regexes(pattern) == expected


def test_a_pattern_with_too_many_dots_is_refused() -> None:
    with pytest.raises(UsageError, match="too many dotted names"):
        _regexes("a.b.c.d")


# -- CSV exports ----------------------------------------------------------------------------


def test_csv_export_records_columns_types_and_counts(tables: Tables) -> None:
    facts = tables.csv_facts
    exports = {e["table"]: e for e in facts["exports"]}
    assert set(exports) == {"typed", UMLAUT}
    typed = exports["typed"]
    assert typed["rows"] == 5 and typed["file"] == "public.typed.csv"
    assert [(c["name"], c["type"]) for c in typed["columns"]] == column_types(
        tables.world, "emr", "public.typed"
    )
    assert ("amount", "numeric(14,4)") in [(c["name"], c["type"]) for c in typed["columns"]]
    assert facts["row_counts"] == {f"billing.{UMLAUT}": 3, "public.typed": 5}
    assert facts["settings"]["TimeZone"] == "UTC"


def test_csv_restore_into_an_empty_existing_table(tables: Tables) -> None:
    world = tables.world
    world.cluster.execute("CREATE DATABASE csv_a")
    world.cluster.execute(
        "CREATE TABLE typed (id int PRIMARY KEY, note text, at timestamptz,"
        " amount numeric(14, 4), scan bytea, flag boolean, day date, doc jsonb,"
        " ratio double precision)",
        "csv_a",
    )
    done = world.cli(
        "restore", tables.csv_snapshot, "--table", "typed", "--database", "csv_a", "--json"
    )
    result = json.loads(done.stdout)
    assert result["tables"] == {"public.typed": {"rows": 5, "created": False}}
    assert rows_of(world, "csv_a", "typed") == rows_of(world, "emr", "typed")
    # The primary key made by hand stays: the rows went into the existing table.
    assert world.cluster.scalar(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'typed'::regclass", "csv_a"
    )


def test_csv_restore_creates_a_missing_table_from_the_recorded_types(tables: Tables) -> None:
    world = tables.world
    world.cluster.execute("CREATE DATABASE csv_b")
    world.cli("restore", tables.csv_snapshot, "--database", "csv_b")
    quoted = f'billing."{UMLAUT}"'
    assert table_names(world, "csv_b") == {"public.typed", f"billing.{UMLAUT}"}
    for table in ("public.typed", quoted):
        assert column_types(world, "csv_b", table) == column_types(world, "emr", table)
        assert rows_of(world, "csv_b", table) == rows_of(world, "emr", table)
    # NULL and '' stay apart, as do the zones of times (compared as instants).
    note = world.cluster.query("SELECT note IS NULL, note FROM typed WHERE id IN (2, 3)", "csv_b")
    assert [tuple(r) for r in note] == [(True, None), (False, "")]


def test_csv_restore_refuses_a_non_empty_table_unless_appending(tables: Tables) -> None:
    world = tables.world
    world.cluster.execute("CREATE DATABASE csv_c")
    world.cli("restore", tables.csv_snapshot, "--database", "csv_c", "--table", "typed")
    refused = world.cli(
        "restore", tables.csv_snapshot, "--database", "csv_c", "--table", "typed", check=False
    )
    assert refused.returncode == 16
    assert "table public.typed in database csv_c is not empty" in refused.stderr
    assert "--append" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert world.cluster.scalar("SELECT count(*) FROM typed", "csv_c") == 5
    world.cli("restore", tables.csv_snapshot, "--database", "csv_c", "--table", "typed", "--append")
    assert world.cluster.scalar("SELECT count(*) FROM typed", "csv_c") == 10


def test_csv_restore_of_a_table_the_snapshot_lacks_is_refused(tables: Tables) -> None:
    done = tables.world.cli(
        "restore", tables.csv_snapshot, "--database", "emr", "--table", "patients", check=False
    )
    assert done.returncode == 4
    assert "table patients is not in CSV snapshot" in done.stderr


def test_csv_files_are_written_out_and_never_over_existing_ones(tables: Tables) -> None:
    world = tables.world
    out = world.base / "csv-out"
    done = world.cli("restore", tables.csv_snapshot, "--target", str(out), "--json")
    assert sorted(json.loads(done.stdout)["files"]) == sorted(
        str(out / name) for name in (f"billing.{UMLAUT}.csv", "public.typed.csv")
    )
    typed = out / "public.typed.csv"
    assert stat.S_IMODE(typed.stat().st_mode) == 0o600
    text = typed.read_bytes().decode("utf-8")  # as written: no newline translation
    assert text.startswith("id,note,at,amount,scan,flag,day,doc,ratio\n")
    assert '"line one\nline two, ""quoted""\r\n\\ back"' in text
    assert "2026-03-01 04:43:00+00" in text  # written in UTC
    before = typed.read_bytes()
    again = world.cli("restore", tables.csv_snapshot, "--target", str(out), check=False)
    assert again.returncode == 16 and "refusing to overwrite" in again.stderr
    assert typed.read_bytes() == before


def test_a_drill_loads_every_table_into_a_scratch_database_and_drops_it(tables: Tables) -> None:
    world = tables.world
    done = world.cli("drill", "rx", "--snapshot", tables.csv_snapshot, "--json")
    result = json.loads(done.stdout)
    assert result["ok"] is True
    counts = next(c for c in result["checks"] if c["name"] == "row counts")
    assert counts["detail"].startswith("2 tables, 8 rows")
    left = world.cluster.scalar(
        "SELECT count(*) FROM pg_database WHERE starts_with(datname, 'medvault_drill')"
    )
    assert left == 0


def test_format_csv_on_a_postgres_source(tables: Tables) -> None:
    world = tables.world
    result = logical(world, "emr", "--database", "emr", "--format", "csv", "--table", "billing.*")
    assert result["format"] == "csv"
    assert result["row_counts"] == {f"billing.{UMLAUT}": 3, "billing.invoices": 20}
    refused = world.cli("backup", "emr", "--logical", "--format", "csv", check=False)
    assert refused.returncode == 2 and "a CSV export names its tables" in refused.stderr


# -- configuration --------------------------------------------------------------------------


def test_a_csv_source_needs_tables_and_takes_only_the_logical_schedule() -> None:
    base = {"kind": "postgres-csv", "dsn": "host=/tmp dbname=emr"}
    repo = {"r": {"url": "/tmp/nowhere"}}
    with pytest.raises(ValueError, match="tables"):
        Settings(source={"rx": base})
    Settings(
        repository=repo,
        source={"rx": {**base, "tables": ["t"], "schedule": {"logical": "0 2 * * *"}}},
    )
    with pytest.raises(ValueError, match="logical job only"):
        Settings(
            repository=repo,
            source={"rx": {**base, "tables": ["t"], "schedule": {"full": "0 2 * * *"}}},
        )
    with pytest.raises(ValueError, match="password"):
        Settings(source={"rx": {**base, "dsn": "dbname=emr password=x", "tables": ["t"]}})


def test_csv_export_of_a_pattern_matching_nothing_is_refused(tables: Tables) -> None:
    world = tables.world
    before = snapshot_count(world)
    done = world.cli(
        "backup", "emr", "--logical", "--format", "csv", "--table", "public.gone", check=False
    )
    assert done.returncode == 2
    assert "table pattern public.gone matches no table" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert snapshot_count(world) == before


# -- facts ----------------------------------------------------------------------------------


def test_csv_facts_read_back_what_they_wrote_and_refuse_a_malformed_export(
    tables: Tables,
) -> None:
    facts = CsvFacts.from_map(tables.csv_facts, "abc")
    assert facts.to_map() == tables.csv_facts
    assert facts.row_counts == {f"billing.{UMLAUT}": 3, "public.typed": 5}
    broken = {**tables.csv_facts, "exports": [{"schema": "public", "table": "t", "rows": -1}]}
    with pytest.raises(IntegrityError, match="malformed fact 'exports'"):
        CsvFacts.from_map(broken, "abc")


def test_logical_facts_store_table_patterns_only_when_given() -> None:
    stored = {
        "database": "emr",
        "server_version": "15.6",
        "server_version_num": 150006,
        "snapshot_time": "2026-03-01T10:00:00+00:00",
        "encoding": "UTF8",
        "lc_collate": "C",
        "lc_ctype": "C",
        "system_identifier": None,
        "dump_format": "custom",
        "dump_compression": "none",
        "pg_dump_version": "pg_dump (PostgreSQL) 15.6",
        "row_counts": {"public.t": 1},
    }
    whole = LogicalFacts.from_map(stored)
    assert not whole.selective and whole.to_map() == stored
    named = {**stored, "tables": ["public.t"], "exclude_tables": ["public.u"]}
    facts = LogicalFacts.from_map(named)
    assert facts.selective and facts.table_patterns == ("public.t",)
    assert facts.to_map() == named
    with pytest.raises(IntegrityError):
        LogicalFacts.from_map({**stored, "tables": "public.t"})


def test_restore_checks_run_after_a_csv_load(tables: Tables) -> None:
    world = tables.world
    original = world.config.read_text()
    world.cluster.execute("CREATE DATABASE csv_checked")
    world.cluster.execute("CREATE DATABASE csv_checked_2")
    try:
        world.config.write_text(
            original + '\n[source.rx.restore]\nchecks = ["SELECT count(*) = 5 FROM typed"]\n'
        )
        args = ("restore", tables.csv_snapshot, "--table", "typed", "--json")
        passed = json.loads(world.cli(*args, "--database", "csv_checked").stdout)
        assert [c["ok"] for c in passed["checks"]] == [True]
        world.config.write_text(
            original + '\n[source.rx.restore]\nchecks = ["SELECT count(*) = 6 FROM typed"]\n'
        )
        failed = world.cli(*args, "--database", "csv_checked_2", check=False)
        assert failed.returncode == 31, failed.stderr
        assert "count(*) = 6" in failed.stderr
        assert rows_of(world, "csv_checked_2", "typed")  # the rows stay for a person to look at
    finally:
        world.config.write_text(original)
