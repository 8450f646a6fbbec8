"""Restore drills: files and logical PostgreSQL snapshots restored into scratch space,
validated, timed against the tier's RTO, recorded, and always cleaned up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
from tests.faultpoints import Pause, faults_env
from tests.pgcluster import (
    PgCluster,
    PgWorld,
    as_postgres,
    make_pg_tempdir,
    popen_as_postgres,
    run_as_postgres,
)

from conftest import MEDVAULT, PASSWORD, Cli, S3Server

MiB = 1024 * 1024


def files_cli(tmp_path: Path, data: Path, rto: str = "1h", scratch: Path | None = None) -> Cli:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.main]\nurl = "{tmp_path / "repo"}"\n'
        f'[tier.records]\nrto = "{rto}"\ndrill_every = "7d"\n'
        f'[source.letters]\nkind = "files"\npaths = ["{data}"]\ntier = "records"\n'
        + (f'[drill]\nscratch = "{scratch}"\n' if scratch is not None else "")
    )
    cli = Cli("main", tmp_path, tmp_path / "repo")
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli("init")
    return cli


def test_files_drill_passes_is_recorded_and_leaves_nothing(tmp_path: Path, make_tree) -> None:
    data = make_tree({"a/letter.txt": b"Dear colleague\n" * 500, "b/scan.dcm": os.urandom(MiB)})
    cli = files_cli(tmp_path, data)
    cli("backup", "letters")
    (before,) = json.loads(cli("status", "--json", check=False).stdout)["sources"]
    assert before["drill_overdue"] and before["state"] == "WARN", "never proven restorable"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = json.loads(cli("drill", "letters", "--scratch", str(scratch), "--json").stdout)
    assert result["ok"] and result["within_rto"] is True and result["rto_target_s"] == 3600
    assert {c["name"] for c in result["checks"]} == {"restore", "files"}
    assert not list(scratch.iterdir()), "the restored patient data is gone"
    listed = json.loads(cli("drills", "--json").stdout)
    assert [d["snapshot"] for d in listed] == [result["snapshot"]]
    (row,) = json.loads(cli("status", "--json", check=False).stdout)["sources"]
    assert row["last_drill_ok"] and 0 <= row["last_drill_age_s"] < 600
    assert not row["drill_overdue"] and row["state"] == "OK"
    table = cli("status", check=False).stdout.splitlines()
    assert "SNAPS" in table[1] and "LAST DRILL" in table[1]
    assert " ago" in table[2] and table[2].split()[2] == "1", table


def test_a_drill_that_cannot_restore_fails_and_is_recorded(tmp_path: Path, make_tree) -> None:
    data = make_tree({"scan.dcm": os.urandom(2 * MiB)})
    cli = files_cli(tmp_path, data)
    cli("backup", "letters")
    biggest = max((cli.repo / "data").rglob("*"), key=lambda p: p.stat().st_size)
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2] ^= 1
    biggest.write_bytes(bytes(raw))
    done = cli("drill", "letters", check=False)
    assert done.returncode == 23 and "failed" in done.stderr
    (record,) = json.loads(cli("drills", "--json").stdout)
    assert record["ok"] is False and "authentication" in record["error"]


def test_an_interrupted_drill_cleans_up(tmp_path: Path, make_tree) -> None:
    data = make_tree({f"scan{n}.dcm": os.urandom(40 * MiB) for n in range(6)})
    cli = files_cli(tmp_path, data)
    cli("backup", "letters")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.Popen(
        [MEDVAULT, "drill", "letters", "--scratch", str(scratch)],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not any(scratch.rglob("*.dcm")) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not list(scratch.iterdir()), "Ctrl-C still removes the restored data"


def test_a_files_drill_as_an_unprivileged_user_removes_read_only_data_and_passes() -> None:
    """Restored as a user other than root, a 0555 directory of 0444 files cannot be emptied
    until its owner makes it writable again: the drill does, and leaves nothing behind."""
    base = make_pg_tempdir("medvault-test-user-")
    try:
        scans = base / "data" / "scans"
        scans.mkdir(parents=True)
        for n in range(3):
            (scans / f"scan{n}.dcm").write_bytes(os.urandom(4096))
            (scans / f"scan{n}.dcm").chmod(0o444)
        scans.chmod(0o555)
        scratch = base / "scratch"
        scratch.mkdir()
        as_postgres(scratch)
        config = base / "medvault.toml"
        config.write_text(
            f'[repository.main]\nurl = "{base / "repo"}"\n'
            f'[source.letters]\nkind = "files"\npaths = ["{base / "data"}"]\n'
        )
        env = {"PATH": os.environ["PATH"], "MEDVAULT_PASSWORD": PASSWORD}
        env["MEDVAULT_CONFIG"] = str(config)
        run_as_postgres([MEDVAULT, "init"], env=env)
        run_as_postgres([MEDVAULT, "backup", "letters"], env=env)
        done = run_as_postgres(
            [MEDVAULT, "drill", "letters", "--scratch", str(scratch), "--json"],
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ok"]
        assert not list(scratch.iterdir()), "no decrypted patient data is left"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_a_drill_whose_copy_cannot_be_removed_fails_naming_what_is_left(
    tmp_path: Path, make_tree
) -> None:
    data = make_tree({"scans/ct.dcm": os.urandom(4096)})
    cli = files_cli(tmp_path, data)
    cli("backup", "letters")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    pause = Pause(tmp_path / "faults", "drill.before-cleanup")
    proc = subprocess.Popen(
        [MEDVAULT, "drill", "letters", "--scratch", str(scratch), "--json"],
        env=cli.env | faults_env(**{"drill.before-cleanup": pause.action}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pause.wait(proc)
    (stuck,) = scratch.rglob("ct.dcm")
    subprocess.run(["chattr", "+i", str(stuck)], check=True)  # not even root may unlink it
    try:
        pause.release()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 23, err
        cleanup = {c["name"]: c for c in json.loads(out)["checks"]}["cleanup"]
        assert not cleanup["ok"], cleanup
        assert f"{stuck}: Operation not permitted" in cleanup["detail"]
        assert "remove it by hand" in cleanup["detail"]
        assert str(stuck) in err
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)


def test_a_killed_drills_scratch_is_reported_by_status_and_removed_by_the_next_drill(
    tmp_path: Path, make_tree
) -> None:
    data = make_tree({f"scans/scan{n}.dcm": os.urandom(64 * 1024) for n in range(4)})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cli = files_cli(tmp_path, data, scratch=scratch)
    (tmp_path / "tmp").mkdir()
    cli.env["TMPDIR"] = str(tmp_path / "tmp")  # status looks there too: only this test's
    cli("backup", "letters")
    killed = cli(
        "drill", "letters", env=faults_env(**{"restore.file-written": "kill"}), check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (left,) = scratch.iterdir()
    assert left.name.startswith("medvault-drill-") and any(left.rglob("scan*.dcm"))
    (listed,) = json.loads(cli("status", "--json", check=False).stdout)["drill_scratch"]
    assert listed["path"] == str(left) and listed["drill_ended"], listed
    assert listed["state"] == "CRITICAL" and "no longer running" in listed["owner"]
    assert (
        f"drill scratch: CRITICAL: {left} holds a restored copy"
        in cli("status", check=False).stdout
    )
    result = json.loads(cli("drill", "letters", "--json").stdout)
    assert result["ok"], result
    swept = {c["name"]: c for c in result["checks"]}["leftover scratch"]
    assert swept["ok"] and f"removed {left}" in swept["detail"], swept
    assert not list(scratch.iterdir())
    assert json.loads(cli("status", "--json", check=False).stdout)["drill_scratch"] == []


def test_a_drill_leaves_the_scratch_of_a_drill_still_running_alone(
    tmp_path: Path, make_tree
) -> None:
    data = make_tree({"scans/ct.dcm": os.urandom(4096)})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cli = files_cli(tmp_path, data, scratch=scratch)
    (tmp_path / "tmp").mkdir()
    cli.env["TMPDIR"] = str(tmp_path / "tmp")
    cli("backup", "letters")
    pause = Pause(tmp_path / "faults", "drill.before-cleanup")
    running = subprocess.Popen(
        [MEDVAULT, "drill", "letters"],
        env=cli.env | faults_env(**{"drill.before-cleanup": pause.action}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pause.wait(running)
        (busy,) = scratch.iterdir()
        result = json.loads(cli("drill", "letters", "--json").stdout)
        assert result["ok"] and "leftover scratch" not in {c["name"] for c in result["checks"]}
        assert list(scratch.iterdir()) == [busy], "the running drill's copy is untouched"
        assert json.loads(cli("status", "--json", check=False).stdout)["drill_scratch"] == []
    finally:
        pause.release()
        _, err = running.communicate(timeout=120)
    assert running.returncode == 0, err
    assert not list(scratch.iterdir())


def test_logical_drill_compares_every_tables_row_count(pg_world: PgWorld) -> None:
    world = pg_world
    cluster = world.start_archiving_cluster()
    cluster.execute(
        "CREATE TABLE patients (id int); INSERT INTO patients SELECT generate_series(1, 500);"
        "CREATE TABLE notes (id int); INSERT INTO notes SELECT generate_series(1, 70)"
    )
    world.cli("backup", "emr", "--logical")
    world.cli("backup", "emr", "--type", "full")  # now the newest snapshot of emr
    result = json.loads(world.cli("drill", "emr", "--kind", "logical", "--json").stdout)
    assert result["ok"] and result["kind"] == "postgres.logical", result
    assert "2 tables, 570 rows" in result["checks"][0]["detail"]
    databases = {row[0] for row in cluster.query("SELECT datname FROM pg_database")}
    assert not any(name.startswith("medvault_drill_") for name in databases)
    wrong = world.cli("drill", "emr", "--kind", "logical", "--to-latest", check=False)
    assert wrong.returncode == 2 and "physical backups only" in wrong.stderr


def test_a_logical_drill_whose_copy_cannot_be_dropped_fails_naming_it(
    pg_world: PgWorld,
) -> None:
    """The copy holds patient data: when it cannot be removed (here a user check made it a
    template database, which DROP refuses), the drill fails and says which database to drop."""
    world = pg_world
    cluster = world.start_archiving_cluster()
    cluster.execute("CREATE TABLE patients (id int); INSERT INTO patients SELECT 1")
    world.write_config(
        "[source.emr.drill]\nchecks = [\"DO $$ BEGIN EXECUTE format('ALTER DATABASE %I "
        "IS_TEMPLATE true', current_database()); END $$\"]\n"
    )
    world.cli("backup", "emr", "--logical")
    done = world.cli("drill", "emr", "--kind", "logical", "--json", check=False)
    assert done.returncode == 23, done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    left = [r[0] for r in cluster.query("SELECT datname FROM pg_database WHERE datistemplate")]
    left = [name for name in left if name.startswith("medvault_drill_")]
    assert len(left) == 1
    cleanup = checks["cleanup"]
    assert not cleanup["ok"] and left[0] in cleanup["detail"], cleanup
    assert "template" in cleanup["detail"] and "drop it by hand" in cleanup["detail"]
    cluster.execute(f"ALTER DATABASE {left[0]} IS_TEMPLATE false")
    cluster.execute(f"DROP DATABASE {left[0]}")


def test_a_killed_logical_drills_database_is_dropped_by_the_next_logical_drill(
    pg_world: PgWorld,
) -> None:
    world = pg_world
    cluster = world.start_archiving_cluster()
    cluster.execute(
        "CREATE TABLE patients (id int); INSERT INTO patients SELECT generate_series(1, 50)"
    )
    world.cli("backup", "emr", "--logical")
    killed = world.cli(
        "drill",
        "emr",
        "--kind",
        "logical",
        env=faults_env(**{"drill.before-cleanup": "kill"}),
        check=False,
    )
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), killed.stderr
    databases = [row[0] for row in cluster.query("SELECT datname FROM pg_database")]
    (left,) = [name for name in databases if name.startswith("medvault_drill_")]
    assert cluster.scalar("SELECT count(*) FROM patients", dbname=left) == 50
    result = json.loads(world.cli("drill", "emr", "--kind", "logical", "--json").stdout)
    assert result["ok"], result
    swept = {c["name"]: c for c in result["checks"]}["leftover scratch"]
    assert swept["ok"] and f"dropped database {left}" in swept["detail"], swept
    databases = [row[0] for row in cluster.query("SELECT datname FROM pg_database")]
    assert not any(name.startswith("medvault_drill_") for name in databases)


def _physical_world(world: PgWorld, drill_section: str = "") -> None:
    """An archiving cluster with a patients table, a medvault.toml with the given drill
    section, and one full physical backup."""
    cluster = world.start_archiving_cluster()
    if drill_section:
        world.write_config(extra_source=drill_section)
    cluster.execute(
        "CREATE TABLE patients (id int PRIMARY KEY, name text);"
        "INSERT INTO patients SELECT g, 'patient ' || g FROM generate_series(1, 500) g;"
        "CREATE INDEX patients_name ON patients (name)"
    )
    world.cli("backup", "emr", "--type", "full")


def _no_drill_left(scratch: Path) -> None:
    assert not list(scratch.iterdir()), "the restored copy is gone"
    # The throwaway postmaster runs as `postgres -D <scratch>/medvault-drill-…/pgdata`; other
    # tests' drills may be running beside this one, so only this scratch space counts.
    leftover = subprocess.run(
        ["pgrep", "-f", f"postgres -D {scratch}/"], capture_output=True, text=True, check=False
    )
    assert leftover.returncode == 1, f"no throwaway server is left running: {leftover}"


def test_physical_drill_replays_validates_and_cleans_up(pg_world: PgWorld) -> None:
    world = pg_world
    _physical_world(
        world,
        '[source.emr.drill]\nshared_buffers = "48MB"\nchecks = ["SELECT count(*) >= 500 FROM '
        "patients\", \"SELECT current_setting('shared_buffers') = '48MB'\"]\n",
    )
    scratch = world.base / "scratch"
    scratch.mkdir()
    as_postgres(scratch)
    done = world.cli("drill", "emr", "--scratch", str(scratch), "--json")
    result = json.loads(done.stdout)
    assert result["ok"] and result["kind"] == "postgres.physical", result
    checks = {c["name"]: c for c in result["checks"]}
    assert set(checks) == {
        "restore",
        "recovery",
        "tables",
        "amcheck",
        "check: SELECT count(*) >= 500 FROM patients",
        "check: SELECT current_setting('shared_buffers') = '48MB'",
    }
    assert "end of the backup" in checks["recovery"]["detail"]
    assert "500 rows" in checks["tables"]["detail"]
    # patients_pkey and patients_name, and the catalogs' own indexes
    verified = int(checks["amcheck"]["detail"].split()[0])
    assert verified > 2
    assert result["within_rto"] is True
    assert result["cleanup_s"] > 0 and result["rto_s"] > 0, "clean-up is timed apart from RTO"
    took = {name: checks[name]["seconds"] for name in ("restore", "recovery", "tables", "amcheck")}
    assert all(seconds > 0 for seconds in took.values()), checks
    # Counting and amcheck run at the same time, each timed from the start of validation.
    steps = took["restore"] + took["recovery"] + max(took["tables"], took["amcheck"])
    assert steps <= result["rto_s"], "each step's time is part of the RTO"
    _no_drill_left(scratch)
    assert world.cluster.scalar("SELECT count(*) FROM patients") == 500, "production untouched"


def _damage_page(
    cluster: PgCluster, relation_sql: str, block: int, dbname: str = "postgres"
) -> None:
    """Overwrite one page header on disk (no checksums here: PostgreSQL notices only when it
    reads the page)."""
    relative = cluster.scalar(f"SELECT pg_relation_filepath({relation_sql})", dbname=dbname)
    with (cluster.datadir / str(relative)).open("r+b") as handle:
        handle.seek(block * 8192)
        handle.write(b"\xff" * 24)


def _failing_drill(world: PgWorld) -> dict[str, dict[str, object]]:
    """Back up, drill, expect the drill to fail cleanly (exit 23, nothing left); its checks."""
    world.cli("backup", "emr", "--type", "full")
    scratch = world.base / "scratch"
    scratch.mkdir()
    as_postgres(scratch)
    done = world.cli("drill", "emr", "--scratch", str(scratch), "--json", check=False)
    assert done.returncode == 23, done.stderr
    assert "internal error" not in done.stderr
    _no_drill_left(scratch)
    return {c["name"]: c for c in json.loads(done.stdout)["checks"]}


def test_physical_drill_reads_every_heap_and_toast_page(pg_world: PgWorld) -> None:
    """An all-visible table is counted by the planner from its primary key, and a count never
    reads the TOAST table holding large values: a drill must read both, so a damaged page in
    either fails it."""
    world = pg_world
    cluster = world.start_archiving_cluster()
    cluster.execute(
        "CREATE TABLE scans (id int PRIMARY KEY, letter text);"
        "INSERT INTO scans SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g;"
        "CREATE TABLE letters (id int PRIMARY KEY, body text);"
        "ALTER TABLE letters ALTER body SET STORAGE EXTERNAL;"
        "INSERT INTO letters SELECT g, (SELECT string_agg(md5(s.i || '-' || g), '')"
        " FROM generate_series(1, 700) s(i)) FROM generate_series(1, 20) g"
    )
    cluster.execute("VACUUM (ANALYZE) scans")  # every page all-visible
    cluster.execute("CHECKPOINT")
    plan = "\n".join(r[0] for r in cluster.query("EXPLAIN SELECT count(*) FROM scans"))
    assert "Index Only Scan" in plan, f"the planner would not read the heap: {plan}"
    _damage_page(cluster, "'scans'", 3)
    _damage_page(cluster, "(SELECT reltoastrelid FROM pg_class WHERE relname = 'letters')", 2)
    checks = _failing_drill(world)
    detail = str(checks["tables"]["detail"])
    assert not checks["tables"]["ok"]
    assert "public.scans: invalid page in block 3" in detail, detail
    assert "(TOAST of public.letters): invalid page in block 2" in detail, detail
    assert checks["amcheck"]["ok"], "the indexes themselves are sound"


def test_a_database_with_a_damaged_catalog_fails_the_drill_and_the_others_are_read(
    pg_world: PgWorld,
) -> None:
    world = pg_world
    _physical_world(world, '[source.emr.drill]\ndatabase = "archive"\nchecks = ["SELECT true"]\n')
    cluster = world.cluster
    cluster.execute("CREATE DATABASE archive")
    cluster.execute("CREATE TABLE old_letters (id int)", dbname="archive")
    cluster.execute("CHECKPOINT")
    # pg_class's first page: opening a session in that database reads it (the relation cache
    # file is not backed up), so no connection to it can be made in the restored copy.
    _damage_page(cluster, "'pg_class'", 0, dbname="archive")
    checks = _failing_drill(world)
    detail = str(checks["tables"]["detail"])
    assert not checks["tables"]["ok"]
    assert "archive: cannot be read:" in detail and "invalid page" in detail, detail
    assert "500 rows" in detail, "the other database was still counted"
    user_check = checks["check: SELECT true"]
    assert not user_check["ok"] and "archive: " in str(user_check["detail"]), user_check
    stored = json.loads(world.cli("drills", "--json").stdout)
    assert stored[-1]["ok"] is False, "the failed drill is on record"


def test_physical_drill_to_latest_proves_the_wal_chain(pg_world: PgWorld) -> None:
    world = pg_world
    _physical_world(
        world,
        '[source.emr.drill]\nchecks = ["SELECT count(*) = 800 FROM patients"]\n',
    )
    cluster = world.cluster
    cluster.execute("INSERT INTO patients SELECT g, 'late ' || g FROM generate_series(501, 800) g")
    cluster.wait_archived(cluster.switch_wal())
    # To the end of the backup, the later rows are not there: the user check fails.
    failed = world.cli("drill", "emr", "--json", check=False)
    assert failed.returncode == 23
    assert "count(*) = 800" in failed.stderr and "False" in failed.stderr
    passed = json.loads(world.cli("drill", "emr", "--to-latest", "--json").stdout)
    assert passed["ok"], passed
    recovery = next(c for c in passed["checks"] if c["name"] == "recovery")
    assert "newest archived WAL" in recovery["detail"]
    records = json.loads(world.cli("drills", "--json").stdout)
    assert [r["ok"] for r in records] == [False, True]


def test_physical_drill_with_a_gap_in_the_wal_fails_cleanly(pg_world: PgWorld) -> None:
    world = pg_world
    _physical_world(world)
    cluster = world.cluster
    for batch in range(2):
        cluster.execute(
            f"INSERT INTO patients SELECT g + {1000 * (batch + 1)}, 'x' "
            "FROM generate_series(1, 10) g"
        )
        cluster.wait_archived(cluster.switch_wal())
    archived = sorted(p for p in (world.repo / "wal").rglob("0000000100000000000000*"))
    archived[-2].unlink()
    scratch = world.base / "scratch"
    scratch.mkdir()
    as_postgres(scratch)
    done = world.cli("drill", "emr", "--to-latest", "--scratch", str(scratch), check=False)
    assert done.returncode == 23, done.stderr
    assert "lacks" in done.stderr and archived[-2].name in done.stderr
    _no_drill_left(scratch)
    # The end of the backup needs none of the later WAL: that drill still passes.
    world.cli("drill", "emr", "--scratch", str(scratch))
    _no_drill_left(scratch)


def test_an_interrupted_physical_drill_stops_its_server_and_cleans_up(pg_world: PgWorld) -> None:
    world = pg_world
    _physical_world(world)
    cluster = world.cluster
    cluster.execute("INSERT INTO patients SELECT g + 1000, 'x' FROM generate_series(1, 10) g")
    cluster.wait_archived(cluster.switch_wal())
    scratch = world.base / "scratch"
    scratch.mkdir()
    as_postgres(scratch)
    proc = popen_as_postgres(
        [MEDVAULT, "--config", str(world.config), "drill", "emr", "--scratch", str(scratch)],
        world.cli.env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(scratch.rglob("postmaster.pid")):
        time.sleep(0.02)
    assert any(scratch.rglob("postmaster.pid")), "the throwaway server started"
    running = subprocess.run(
        ["pgrep", "-f", f"postgres -D {scratch}/"], capture_output=True, text=True, check=False
    )
    assert running.stdout.strip(), "the check for leftovers would see it"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    _no_drill_left(scratch)


def test_a_root_drill_runs_the_server_as_the_data_owner_with_tablespaces_apart(
    pg_world: PgWorld,
) -> None:
    """PostgreSQL refuses root: a drill started by root (cron) hands the throwaway server to
    the account owning the restored files. Tablespaces are restored into the scratch space,
    never over production's."""
    world = pg_world
    cluster = world.start_archiving_cluster()
    space = world.tablespace()
    cluster.execute(
        "CREATE TABLE patients TABLESPACE space1 AS SELECT g AS id FROM generate_series(1, 700) g"
    )
    world.cli("backup", "emr", "--type", "full")
    before = sorted(p.name for p in space.rglob("*"))
    done = subprocess.run(
        [MEDVAULT, "--config", str(world.config), "drill", "emr", "--json"],
        env=world.cli.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] and "700 rows" in result["checks"][2]["detail"], result
    assert sorted(p.name for p in space.rglob("*")) == before, "the tablespace was restored apart"


def test_a_drill_logs_in_as_the_sources_role_when_no_postgres_role_exists(
    pg_world: PgWorld,
) -> None:
    """The copy's roles are production's: with the superuser renamed, the drill logs in as
    the role of the source's dsn."""
    world = pg_world
    cluster = world.start_archiving_cluster()
    cluster.execute("CREATE ROLE keeper SUPERUSER LOGIN")
    as_keeper = cluster.dsn.replace("user=postgres", "user=keeper")
    as_admin = cluster.dsn.replace("user=postgres", "user=clinic_admin")
    with psycopg.connect(as_keeper, autocommit=True) as conn:
        conn.execute("ALTER ROLE postgres RENAME TO clinic_admin")
    with psycopg.connect(as_admin, autocommit=True) as conn:
        conn.execute("DROP ROLE keeper")
        conn.execute("CREATE TABLE patients AS SELECT g AS id FROM generate_series(1, 42) g")
    world.config.write_text(world.config.read_text().replace("user=postgres", "user=clinic_admin"))
    world.cli("backup", "emr", "--type", "full")
    result = json.loads(world.cli("drill", "emr", "--json").stdout)
    assert result["ok"] and "42 rows" in result["checks"][2]["detail"], result


def test_a_physical_drill_from_an_s3_repository(s3_server: S3Server, pg_world: PgWorld) -> None:
    """Base backup and WAL read over HTTP from the S3 server (the fixture's AWS variables are
    in the environment of the cluster's archive_command and of medvault)."""
    world = pg_world
    key_file = world.base / "s3.key"
    url = f"s3://{s3_server.new_bucket()}/emr"
    world.cli.env.update(s3_server.env)
    run_as_postgres(
        [MEDVAULT, "--repo", url, "init", "--new-key-file", str(key_file)], env=world.cli.env
    )
    cluster = world.cluster
    world.config.write_text(
        f'[repository.primary]\nurl = "{url}"\nkey_file = "{key_file}"\n\n'
        f'[source.emr]\nkind = "postgres"\ndsn = "{cluster.dsn}"\n'
        f'pgdata = "{cluster.datadir}"\nrepository = "primary"\n'
        '[source.emr.drill]\nchecks = ["SELECT count(*) = 900 FROM patients"]\n'
    )
    as_postgres(world.config)
    cluster.initdb(settings={"archive_mode": "on", "archive_command": world.archive_command()})
    cluster.start()
    cluster.execute("CREATE TABLE patients AS SELECT g AS id FROM generate_series(1, 600) g")
    world.cli("backup", "emr", "--type", "full")
    cluster.execute("INSERT INTO patients SELECT g FROM generate_series(601, 900) g")
    cluster.wait_archived(cluster.switch_wal())
    result = json.loads(world.cli("drill", "emr", "--to-latest", "--json").stdout)
    assert result["ok"], result


def test_a_drill_record_copied_under_another_name_is_rejected(tmp_path: Path, make_tree) -> None:
    data = make_tree({"letter.txt": b"Dear colleague\n" * 500})
    cli = files_cli(tmp_path, data)
    cli("backup", "letters")
    result = json.loads(cli("drill", "letters", "--json").stdout)
    (record,) = cli.objects("drills")
    replayed = record.replace(result["id"][:8], str(int(result["id"][:4]) + 1) + result["id"][4:8])
    with cli.backend() as backend:
        backend.store(replayed, backend.load(record))

    listed = cli("drills", "--json")
    assert [d["id"] for d in json.loads(listed.stdout)] == [result["id"]]
    assert f"drill record {replayed} is unreadable" in listed.stderr
    assert "does not open under its name" in listed.stderr


def test_two_drills_of_one_snapshot_in_the_same_second_are_both_recorded(repo) -> None:
    """A scheduled drill and one run by hand may end in the same second."""
    from medvault.verification.drills import DrillResult, list_results, store_result

    first = DrillResult("ab" * 32, "letters", "files", "2026-12-05T02:00:00+00:00")
    second = DrillResult("ab" * 32, "letters", "files", "2026-12-05T02:00:00+00:00")
    ids = {store_result(repo, first), store_result(repo, second)}
    assert len(ids) == 2
    assert len(list_results(repo)) == 2
