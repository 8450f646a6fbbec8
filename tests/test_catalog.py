"""The catalog: every run a shell makes is spooled in the state directory and reaches the
catalog when it is next opened; `runs` shows it (failures with their error), `stats` counts
it; SQLite in the state directory by default, PostgreSQL by URL (several hosts sharing one),
the schema migrated on open."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from tests.test_service_runs import NIGHT_SHIFT, Given

from conftest import PASSWORD, Cli
from medvault.backends import open_backend
from medvault.catalog.store import HEAD, MIGRATIONS, Catalog
from medvault.errors import CatalogUnavailable, SourceUnavailable, UnsupportedFormat
from medvault.repository.keys import Credential
from medvault.repository.repo import Repository
from medvault.service.backup import FilesBackupOptions, backup_files
from medvault.service.history import (
    RunsOptions,
    StatsOptions,
    parse_since,
    runs,
    stats,
)
from medvault.service.recording import SpoolObserver, ingest_spool, spool, spool_dir
from medvault.service.restore import RestoreOptions, restore
from medvault.service.runs import Caller, RunRecord
from medvault.service.session import Session

PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
UTC = dt.UTC


@pytest.fixture
def pg_catalog(request: pytest.FixtureRequest) -> Iterator[str]:
    """A throwaway database on the machine's PostgreSQL server, dropped afterwards."""
    name = f"medvault_catalog_{os.getpid()}_{os.urandom(4).hex()}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG}/{name}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    url: str = request.getfixturevalue("pg_catalog")
    return url


def write_config(path: Path, catalog_url: str | None = None) -> Path:
    """A medvault.toml with two sources whose tier has an RPO of a day."""
    text = """
[tier.gold]
rpo = "1d"
rto = "1h"

[source.emr]
kind = "files"
paths = ["/srv/emr"]
tier = "gold"

[source.lab]
kind = "files"
paths = ["/srv/lab"]
tier = "gold"
"""
    if catalog_url is not None:
        text += f'\n[catalog]\nurl = "{catalog_url}"\n'
    path.write_text(text)
    return path


def make_session(
    repository: str | None,
    config: Path,
    state_dir: Path | None = None,
    caller: Caller = NIGHT_SHIFT,
) -> Session:
    """A session as a shell builds it: the spool observer attached; the state directory
    beside medvault.toml unless given."""
    session = Session(
        credentials=Given(PASSWORD),
        caller=caller,
        repository=repository,
        config=str(config),
        state_dir=state_dir or config.parent / "state",
    )
    session.observers.append(SpoolObserver(session))
    return session


def spooled(state_dir: Path) -> list[str]:
    return sorted(p.name for p in spool_dir(state_dir).iterdir())


def new_repository(path: Path) -> str:
    Repository.init(open_backend(str(path)), Credential(passphrase=PASSWORD.encode()))
    return str(path)


# -- runs from real operations -------------------------------------------------------------


def test_runs_shows_a_backup_a_failed_backup_and_a_restore_newest_first(
    tmp_path: Path, catalog_url: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "visit.txt").write_bytes(b"BP 120/80\n" * 100)
    repo = new_repository(tmp_path / "repo")
    session = make_session(repo, write_config(tmp_path / "medvault.toml", catalog_url))
    backup_files(session, FilesBackupOptions(paths=(str(data),), source="emr"))
    with pytest.raises(SourceUnavailable):
        backup_files(session, FilesBackupOptions(paths=(str(tmp_path / "gone"),), source="emr"))
    restore(session, RestoreOptions("latest", target=str(tmp_path / "out"), reason="INC-7"))
    assert session.warnings() == []

    found = runs(session, RunsOptions()).runs
    assert [(r.operation, r.status) for r in found] == [
        ("restore", "ok"),
        ("backup", "failed"),
        ("backup", "ok"),
    ]
    restored, failed, backed_up = found
    assert restored.bytes_restored == 1000 and restored.justification == "INC-7"
    assert restored.destination == str(tmp_path / "out")
    assert failed.error is not None and "does not exist" in failed.error
    assert backed_up.bytes_read == 1000 and len(backed_up.snapshots) == 1
    assert backed_up.data_classification is None and backed_up.retention_policy == "tier gold"
    assert (backed_up.user, backed_up.host, backed_up.shell) == (
        "dr.smith",
        "backup-1",
        "scheduler",
    )

    only_failed = runs(session, RunsOptions(failed=True)).runs
    assert [r.run_id for r in only_failed] == [failed.run_id]
    assert [r.run_id for r in runs(session, RunsOptions(operation="restore")).runs] == [
        restored.run_id
    ]
    by_source = runs(session, RunsOptions(source="emr", operation="backup")).runs
    assert [r.run_id for r in by_source] == [failed.run_id, backed_up.run_id]
    assert runs(session, RunsOptions(source="lab")).runs == ()
    assert len(runs(session, RunsOptions(limit=2)).runs) == 2
    later = dt.datetime.now(UTC) + dt.timedelta(minutes=1)
    assert runs(session, RunsOptions(since=later)).runs == ()
    since_failure = dt.datetime.fromisoformat(failed.started)
    assert [r.run_id for r in runs(session, RunsOptions(since=since_failure)).runs] == [
        restored.run_id,
        failed.run_id,
    ]


def test_the_default_catalog_is_sqlite_in_the_state_directory_private_to_its_owner(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a").write_bytes(b"a")
    state = tmp_path / "state"
    session = make_session(
        new_repository(tmp_path / "repo"), write_config(tmp_path / "medvault.toml"), state
    )
    backup_files(session, FilesBackupOptions(paths=(str(data),)))
    (record,) = runs(session, RunsOptions()).runs  # the catalog is made when first opened
    assert (state.stat().st_mode & 0o777, (state / "catalog.db").stat().st_mode & 0o777) == (
        0o700,
        0o600,
    )
    assert (record.operation, record.status, record.source) == ("backup", "ok", "files")


def test_a_spooled_record_survives_a_catalog_that_could_not_be_opened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a").write_bytes(b"a")
    state = tmp_path / "state"
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    config = write_config(tmp_path / "medvault.toml", unreachable)
    session = make_session(new_repository(tmp_path / "repo"), config, state)
    result = backup_files(session, FilesBackupOptions(paths=(str(data),)))
    assert result.snapshot is not None and session.warnings() == []
    (name,) = spooled(state)
    assert (spool_dir(state).stat().st_mode & 0o777, (spool_dir(state) / name).stat().st_mode) == (
        0o700,
        0o100600,
    )
    with pytest.raises(CatalogUnavailable):
        runs(session, RunsOptions())
    assert spooled(state) == [name]  # kept for the next catalog that opens

    reachable = make_session(None, write_config(tmp_path / "medvault.toml"), state)
    (record,) = runs(reachable, RunsOptions()).runs
    assert f"{record.run_id}.json" == name and record.snapshots == (result.snapshot.id,)
    assert spooled(state) == []


def test_ingesting_the_spool_is_idempotent(tmp_path: Path, catalog_url: str) -> None:
    state = tmp_path / "state"
    spool_dir(state).mkdir(parents=True)
    first = constructed("backup", "emr", at(1), 5.0)
    second = constructed("restore", "emr", at(2), 7.0, restored=10)
    path = spool(spool_dir(state), first._asdict())
    kept = path.read_bytes()
    spool(spool_dir(state), second._asdict())
    (spool_dir(state) / "junk.json").write_text("{not json")
    (spool_dir(state) / ".half-written.json.123.tmp").write_text("{")
    with Catalog.open(catalog_url) as catalog:
        done = ingest_spool(catalog, state)
        assert (done.ingested, done.unreadable) == (2, ["junk.json"])
        assert spooled(state) == [".half-written.json.123.tmp", "junk.bad"]
        # A process that died between the insert and the delete: the file comes again.
        path.write_bytes(kept)
        assert ingest_spool(catalog, state).ingested == 1
        assert [RunRecord(**r) for r in catalog.runs()] == [second, first]
        assert ingest_spool(catalog, state).ingested == 0


def test_runs_keeps_each_record_once(tmp_path: Path, catalog_url: str) -> None:
    record = constructed("backup", "emr", dt.datetime(2026, 3, 1, tzinfo=UTC), 5.0)
    with Catalog.open(catalog_url) as catalog:
        catalog.add([record._asdict()])
        catalog.add([record._asdict(), record._asdict()])
        assert [RunRecord(**r) for r in catalog.runs()] == [record]


# -- the CLI -------------------------------------------------------------------------------


def test_the_cli_keeps_its_runs_and_shows_failures_with_their_error(
    initialized_cli: Cli, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"hello")
    initialized_cli("backup", str(data))
    missing = initialized_cli("backup", str(tmp_path / "gone"), check=False)
    assert missing.returncode == SourceUnavailable.exit_code
    assert "warning" not in missing.stderr
    initialized_cli("restore", "latest", "--target", str(tmp_path / "out"))

    listed = json.loads(initialized_cli("runs", "--json").stdout)
    assert [(r["operation"], r["status"]) for r in listed] == [
        ("restore", "ok"),
        ("backup", "failed"),
        ("backup", "ok"),
        ("init", "ok"),
    ]
    assert listed[1]["error"] == f"path {tmp_path / 'gone'} does not exist"
    assert listed[0]["timestamp"] == listed[0]["ended"]

    text = initialized_cli("runs", "--failed").stdout
    assert "failed" in text and f"path {tmp_path / 'gone'} does not exist" in text
    assert text.strip().endswith("1 run(s)")
    only = json.loads(initialized_cli("runs", "--operation", "restore", "--json").stdout)
    assert [r["operation"] for r in only] == ["restore"]
    assert json.loads(initialized_cli("runs", "--source", "nope", "--json").stdout) == []
    assert len(json.loads(initialized_cli("runs", "--since", "1h", "--json").stdout)) == 4
    future = (dt.datetime.now(UTC) + dt.timedelta(days=1)).date().isoformat()
    assert json.loads(initialized_cli("runs", "--since", future, "--json").stdout) == []
    bad = initialized_cli("runs", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "--since 'yesterday'" in bad.stderr

    doc = json.loads(initialized_cli("stats", "--json").stdout)
    backups = next(o for o in doc["operations"] if o["operation"] == "backup")
    assert (backups["runs"], backups["succeeded"], backups["success_rate"]) == (2, 1, 0.5)
    assert "backup" in initialized_cli("stats").stdout


def test_wal_push_keeps_its_failures_and_loads_no_catalog_for_a_success(
    initialized_cli: Cli, tmp_path: Path
) -> None:
    from tests.test_pg_wal import MiB, crafted_segment

    name = "000000010000000000000001"
    segment = tmp_path / "pg_wal" / name
    segment.parent.mkdir()
    segment.write_bytes(crafted_segment(name, 7_000_000_000_000_000_001, 16 * MiB))
    fast = [sys.executable, "-X", "importtime", "-m", "medvault.cli.entry", "wal-push", "emr"]
    env = initialized_cli.env
    state = Path(env["MEDVAULT_STATE_DIR"])
    initialized_cli("runs")  # the init's record, out of the spool
    pushed = subprocess.run([*fast, str(segment)], env=env, capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr
    assert "sqlalchemy" not in pushed.stderr and spooled(state) == []
    # A failure is spooled, and loads no catalog either.
    failed = subprocess.run(
        [*fast, str(tmp_path / "pg_wal" / "nothing")], env=env, capture_output=True, text=True
    )
    said = [line for line in failed.stderr.splitlines() if not line.startswith("import time")]
    assert failed.returncode != 0 and not any("warning" in line for line in said)
    assert "sqlalchemy" not in failed.stderr and len(spooled(state)) == 1

    listed = json.loads(initialized_cli("runs", "--json").stdout)
    assert [(r["operation"], r["status"]) for r in listed] == [
        ("wal-push", "refused"),  # no such file: nothing was started
        ("init", "ok"),
    ]


def test_help_loads_no_sqlalchemy() -> None:
    shown = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "medvault.cli.entry", "--help"],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and "runs" in shown.stdout and "stats" in shown.stdout
    assert "sqlalchemy" not in shown.stderr and "alembic" not in shown.stderr


# -- stats, against a hand computation -----------------------------------------------------


def constructed(
    operation: str,
    source: str | None,
    started: dt.datetime,
    duration_s: float,
    status: str = "ok",
    *,
    read: int = 0,
    stored: int = 0,
    restored: int = 0,
    details: dict[str, object] | None = None,
    host: str = "backup-1",
) -> RunRecord:
    ended = started + dt.timedelta(seconds=duration_s)
    return RunRecord(
        run_id=os.urandom(8).hex(),
        operation=operation,
        source=source,
        repository="/srv/vault",
        started=started.isoformat(timespec="milliseconds"),
        ended=ended.isoformat(timespec="milliseconds"),
        duration_s=duration_s,
        status=status,  # type: ignore[arg-type]
        bytes_read=read,
        bytes_stored=stored,
        bytes_restored=restored,
        snapshots=(),
        error=None if status == "ok" else f"{operation} went wrong",
        user="dr.smith",
        host=host,
        shell="cli",
        details=details or {},
    )


def at(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, tzinfo=UTC)


def test_stats_match_a_hand_computation(tmp_path: Path, catalog_url: str) -> None:
    # The period: ten days up to 31 March 00:00 UTC, i.e. from 21 March 00:00; 240 hours.
    until = at(31)
    records = [
        # Before the period: counted in no total, but its recovery point covers 21 March
        # 00:00 to 12:00 (started 20 March 12:00 + RPO 1d).
        constructed("backup", "emr", at(20, 12), 3600),
        # Covers 22 March 02:00 to 23 March 00:00 (22 h).
        constructed("backup", "emr", at(22), 7200, read=1000, stored=100),
        # Covers up to 23 March 12:00: 12 h more.
        constructed("backup", "emr", at(22, 12), 3600, read=500, stored=50),
        constructed("backup", "emr", at(25), 60, "failed"),
        # Covers 30 March 01:00 to the end of the period (23 h).
        constructed("backup", "emr", at(30), 3600, read=300, stored=30),
        # At the end of the period: outside it.
        constructed("backup", "emr", until, 10),
        constructed("restore", "emr", at(26), 120, restored=4096),
        # Drills: one passed within its RTO, one passed but too slow, one failed; one
        # before the period.
        constructed("drill", "emr", at(23), 600, details={"passed": True, "within_rto": True}),
        constructed("drill", "emr", at(24), 900, details={"passed": True, "within_rto": False}),
        constructed(
            "drill", "emr", at(27), 30, "failed", details={"passed": False, "within_rto": None}
        ),
        constructed("drill", "emr", at(2), 600, details={"passed": True, "within_rto": True}),
    ]
    # Twenty checks of 1 to 20 s, the 5th and 10th failed: mean 10.5 s, p95 the 19th.
    records += [
        constructed("check", None, at(21, 1) + dt.timedelta(minutes=i), float(i), status)
        for i in range(1, 21)
        for status in ["failed" if i in (5, 10) else "ok"]
    ]
    session = make_session(None, write_config(tmp_path / "medvault.toml", catalog_url))
    with Catalog.open(catalog_url) as catalog:
        catalog.add(record._asdict() for record in records)

    result = stats(session, StatsOptions(days=10, until=until))
    assert (result.since, result.until) == (at(21), until)
    ops = {(o.source, o.operation): o for o in result.operations}
    assert set(ops) == {("emr", "backup"), ("emr", "restore"), ("emr", "drill"), (None, "check")}
    backups = ops["emr", "backup"]
    assert (backups.runs, backups.succeeded, backups.success_rate) == (4, 3, 0.75)
    assert backups.mean_duration_s == pytest.approx((7200 + 3600 + 60 + 3600) / 4)
    assert backups.p95_duration_s == 7200  # rank ceil(0.95 * 4) = 4 of 4
    assert (backups.bytes_read, backups.bytes_stored) == (1800, 180)
    checks = ops[None, "check"]
    assert (checks.runs, checks.succeeded, checks.success_rate) == (20, 18, 0.9)
    assert checks.mean_duration_s == pytest.approx(10.5)
    assert checks.p95_duration_s == 19  # rank ceil(0.95 * 20) = 19
    assert ops["emr", "restore"].bytes_restored == 4096
    assert ops["emr", "drill"].runs == 3

    sources = {s.source: s for s in result.sources}
    emr, lab = sources["emr"], sources["lab"]
    assert (emr.tier, emr.rpo) == ("gold", "1d")
    assert emr.within_rpo == pytest.approx((12 + 22 + 12 + 23) / 240)
    assert (emr.drills, emr.drills_passed, emr.drills_within_rto) == (3, 2, 1)
    assert (lab.within_rpo, lab.drills) == (0.0, 0)  # never backed up: never within


def test_since_takes_a_date_a_time_or_a_duration() -> None:
    now = at(31, 12)
    assert parse_since("2026-03-01", now) == at(1)
    assert parse_since("2026-03-01T02:00+01:00", now) == at(1, 1)
    assert parse_since("36h", now) == at(30)


# -- migrations and sharing ----------------------------------------------------------------


def schema(url: str) -> dict[str, list[str]]:
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        found = inspect(engine)
        return {
            table: sorted(
                [c["name"] for c in found.get_columns(table)]
                + [str(i["name"]) for i in found.get_indexes(table)]
            )
            for table in found.get_table_names()
        }
    finally:
        engine.dispose()


def test_a_fresh_catalog_is_created_at_the_newest_revision(catalog_url: str) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD
    with Catalog.open(catalog_url) as catalog:
        assert catalog.revision() == HEAD
    tables = schema(catalog_url)
    assert set(tables) == {
        "alembic_version",
        "runs",
        "chain_heads",
        "alert_states",
        "alert_silences",
        "alert_history",
    }
    assert {"ix_runs_started", "ix_runs_source_operation_started", "ix_runs_status_started"} <= set(
        tables["runs"]
    )


def test_a_catalog_at_the_newest_revision_opens_unchanged(catalog_url: str) -> None:
    record = constructed("backup", "emr", at(1), 5.0)
    with Catalog.open(catalog_url) as catalog:
        catalog.add([record._asdict()])
    before = schema(catalog_url)
    with Catalog.open(catalog_url) as catalog:
        assert catalog.revision() == HEAD
        assert [r["run_id"] for r in catalog.runs()] == [record.run_id]
    assert schema(catalog_url) == before


def test_a_catalog_of_a_newer_medvault_is_refused_in_one_line(catalog_url: str) -> None:
    from sqlalchemy import create_engine, text

    Catalog.open(catalog_url).close()
    engine = create_engine(catalog_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(UnsupportedFormat) as refused:
        Catalog.open(catalog_url)
    message = str(refused.value)
    assert "\n" not in message and "revision 9999" in message and "upgrade medvault" in message


def test_two_hosts_share_one_postgresql_catalog(tmp_path: Path, pg_catalog: str) -> None:
    config = write_config(tmp_path / "medvault.toml", pg_catalog)
    # Both open the fresh catalog at once: one creates it, the other waits and finds it.
    opened: list[BaseException | None] = []

    def open_it() -> None:
        try:
            Catalog.open(pg_catalog).close()
            opened.append(None)
        except BaseException as exc:
            opened.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert opened == [None, None]

    for host in ("ward-a", "ward-b"):
        data = tmp_path / host
        data.mkdir()
        (data / "chart.txt").write_bytes(host.encode())
        session = make_session(
            new_repository(tmp_path / f"repo-{host}"),
            config,
            tmp_path / f"state-{host}",
            caller=Caller(user="dr.smith", shell="cli", host=host),
        )
        backup_files(session, FilesBackupOptions(paths=(str(data),)))
        assert session.warnings() == []
        # The host's spool reaches the shared catalog when the host next opens it.
        runs(session, RunsOptions())
    listed = runs(make_session(None, config, tmp_path / "state-reader"), RunsOptions()).runs
    assert [(r.host, r.operation, r.status) for r in listed] == [
        ("ward-b", "backup", "ok"),
        ("ward-a", "backup", "ok"),
    ]


# -- catch-up from the repository's audit chains, and rebuild --------------------------------

WARD_2 = Caller(user="dr.jones", shell="cli", host="ward-2")


def other_host(repository: str, state_dir: Path) -> Session:
    """A second host: it writes its runs to the repository only (its own state directory,
    no catalog of ours)."""
    from medvault.service.audit import AuditObserver

    session = Session(
        credentials=Given(PASSWORD),
        caller=WARD_2,
        repository=repository,
        state_dir=state_dir,
    )
    session.observers += [AuditObserver(session), SpoolObserver(session)]
    return session


def runs_table(url: str) -> list[tuple[object, ...]]:
    """Every column of every row of `runs`, by run_id."""
    from sqlalchemy import select

    from medvault.catalog.store import RUNS

    with Catalog.open(url) as catalog, catalog.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(select(RUNS).order_by(RUNS.c.run_id))]


def test_the_rebuilt_catalog_equals_the_live_one(
    tmp_path: Path, make_tree, catalog_url: str
) -> None:
    write_config(tmp_path / "medvault.toml", catalog_url)
    data = make_tree({"chart.txt": b"chart " * 500, "scan.dcm": b"s" * 4000})
    repository = str(tmp_path / "repo")
    cli = Cli(repository, tmp_path)
    cli("init")
    first = json.loads(cli("backup", str(data), "--json").stdout)["snapshot"]
    second = json.loads(cli("backup", str(data), "--tag", "nightly", "--json").stdout)["snapshot"]
    assert cli("backup", str(tmp_path / "gone"), check=False).returncode != 0
    cli("restore", first, "--target", str(tmp_path / "out"), "--reason", "INC-12: chart review")
    cli("hold", "add", first, "--reason", "litigation 12")
    cli("forget", second)
    # Host B backs up into the same repository, and seals an hour of wal-push counts.
    ward = other_host(repository, tmp_path / "state-b")
    backup_files(ward, FilesBackupOptions(paths=(str(data),)))
    from medvault.repository.audit import AuditLog

    log = AuditLog(ward.last_opened(), WARD_2.host)
    log.append(
        "wal-push-count",
        {
            "operation": "wal-push",
            "status": "ok",
            "repository": repository,
            "source": "emr",
            "host": WARD_2.host,
            "started": "2026-03-01T02:00:00+00:00",
            "ended": "2026-03-01T02:59:59.999+00:00",
            "timestamp": "2026-03-01T02:59:59.999+00:00",
            "count": 37,
        },
    )

    listed = json.loads(cli("runs", "--json", "--limit", "100").stdout)  # spool + catch-up
    live = runs_table(catalog_url)
    assert sorted((r["operation"], r["status"], r["host"]) for r in listed) == sorted(
        [
            ("init", "ok", os.uname().nodename),
            ("backup", "ok", os.uname().nodename),
            ("backup", "ok", os.uname().nodename),
            ("backup", "failed", os.uname().nodename),
            ("restore", "ok", os.uname().nodename),
            ("hold-add", "ok", os.uname().nodename),
            ("forget", "ok", os.uname().nodename),
            ("backup", "ok", "ward-2"),
            ("wal-push", "ok", "ward-2"),
        ]
    )
    assert len(live) == 9
    (restored,) = [r for r in listed if r["operation"] == "restore"]
    assert restored["justification"] == "INC-12: chart review"
    (pushes,) = [r for r in listed if r["operation"] == "wal-push"]
    assert (pushes["source"], pushes["details"]) == ("emr", {"count": 37})

    rebuilt = json.loads(cli("catalog", "rebuild", "--json").stdout)
    assert (rebuilt["repositories"], rebuilt["chains"]) == (1, 2)
    assert (rebuilt["records"], rebuilt["runs"], rebuilt["spooled"]) == (9, 9, 0)
    assert runs_table(catalog_url) == live
    # Rebuilt, the catalog holds the chains' heads: a catch-up after it adds nothing.
    assert cli("runs").stderr == ""
    assert runs_table(catalog_url) == live
    text = cli("catalog", "rebuild").stdout
    assert "rebuilt: 9 run(s); 9 audit record(s) read from 2 chain(s) of 1 repository" in text


def test_another_hosts_runs_reach_this_catalog_by_catch_up_alone(tmp_path: Path, make_tree) -> None:
    data = make_tree({"chart.txt": b"chart " * 500})
    repository = new_repository(tmp_path / "repo")
    cli = Cli(repository, tmp_path)
    ward = other_host(repository, tmp_path / "state-b")
    backup_files(ward, FilesBackupOptions(paths=(str(data),)))
    assert not (tmp_path / "medvault-state" / "spool").exists()  # host A was told nothing

    assert json.loads(cli("runs", "--json", "--no-catch-up").stdout) == []
    (found,) = json.loads(cli("runs", "--json").stdout)
    assert (found["operation"], found["status"], found["host"], found["user"]) == (
        "backup",
        "ok",
        "ward-2",
        "dr.jones",
    )
    stats_doc = json.loads(cli("stats", "--json").stdout)
    assert [(o["operation"], o["runs"]) for o in stats_doc["operations"]] == [("backup", 1)]
    # The head advanced: the next catch-up reads only what came after.
    backup_files(ward, FilesBackupOptions(paths=(str(data),)))
    assert len(json.loads(cli("runs", "--json").stdout)) == 2
    state = tmp_path / "medvault-state"
    with Catalog.open(f"sqlite:///{state / 'catalog.db'}") as catalog:
        repo_id = Repository.probe(open_backend(repository))[0].repo_id
        assert [seq for seq, _mac in catalog.heads(repo_id).values()] == [1]


def test_a_repository_without_a_credential_is_skipped_with_a_note_never_a_prompt(
    tmp_path: Path, make_tree
) -> None:
    data = make_tree({"chart.txt": b"chart " * 500})
    repository = new_repository(tmp_path / "repo")
    cli = Cli(repository, tmp_path)
    cli("backup", str(data))
    done = cli("runs", "--json", env={"MEDVAULT_PASSWORD": ""})
    assert len(json.loads(done.stdout)) == 1  # this host's own run, from the spool
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"medvault: warning: catalog catch-up skipped {repository}: ")
    assert "no passphrase given" in line


def test_shell_credentials_that_may_not_prompt_raise_instead_even_on_a_terminal() -> None:
    """stdin a terminal: a prompt would wait there (and the run time out); the catch-up's
    credentials raise NoCredential instead."""
    import pty

    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")}
    code = (
        "import sys\n"
        "assert sys.stdin.isatty()\n"
        "from medvault.credentials import CredentialOptions, ShellCredentials\n"
        "from medvault.errors import NoCredential\n"
        "try:\n"
        "    ShellCredentials(CredentialOptions(), interactive=False).primary(None)\n"
        "except NoCredential:\n"
        "    sys.exit(3)\n"
    )
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], stdin=terminal, env=env, check=False, timeout=60
        )
    finally:
        os.close(controller)
        os.close(terminal)
    assert done.returncode == 3
