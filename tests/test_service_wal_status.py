"""`status`, `wal-push`, `wal-fetch` and `wal-status` as service operations: what each returns
and the one record each leaves, called in-process with a session built here."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.test_pg_wal import crafted_segment
from tests.test_service_runs import NIGHT_SHIFT, Given, Kept

from conftest import PASSWORD, Cli, skewed_clock
from medvault.config import load_settings
from medvault.errors import RepositoryNotFound, UsageError, WalConflict
from medvault.service.session import Session
from medvault.service.status import CRITICAL, OK, WARN, status
from medvault.service.wal import PushOptions, acknowledged, fetch, push
from medvault.service.walstatus import wal_status
from medvault.walconfig import full_wal_settings, light_wal_settings

MiB = 1024 * 1024
CLUSTER = 7_000_000_000_000_000_001


@pytest.fixture(autouse=True)
def no_medvault_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session reads no environment; what it is handed must be all that counts."""
    for name in ("MEDVAULT_CONFIG", "MEDVAULT_REPOSITORY", "MEDVAULT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def session(kept: Kept, config: Path) -> Session:
    return Session(
        credentials=Given(PASSWORD), caller=NIGHT_SHIFT, config=str(config), observers=[kept]
    )


# -- status --------------------------------------------------------------------------------


def files_world(tmp_path: Path, make_tree) -> tuple[Cli, Path]:
    data = make_tree({"a.txt": b"clinic letter\n" * 100})
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.primary]\nurl = "{tmp_path / "primary"}"\n\n'
        '[tier.critical]\nrpo = "15m"\nrto = "1h"\nfloor = "7y"\n\n'
        f'[source.uploads]\nkind = "files"\npaths = ["{data}"]\ntier = "critical"\n'
        'repository = "primary"\n'
    )
    cli = Cli("primary", tmp_path, tmp_path / "primary")
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli("init")
    return cli, config


@pytest.mark.parametrize(
    ("backed_up", "state"),
    [("now", OK), ("-25m", WARN), ("-2h", CRITICAL), (None, CRITICAL)],
)
def test_status_rates_each_source_against_its_tiers_rpo(
    tmp_path: Path, make_tree, backed_up: str | None, state: str
) -> None:
    cli, config = files_world(tmp_path, make_tree)
    if backed_up is not None:
        cli("backup", "uploads", env=skewed_clock(backed_up) if backed_up != "now" else None)
    kept = Kept()
    report = status(session(kept, config))

    (row,) = report.sources
    assert (row.source, row.tier, row.rpo, row.state) == ("uploads", "critical", "15m", state)
    assert row.snapshots == (0 if backed_up is None else 1)
    assert report.repository == str(tmp_path / "primary") and report.secondary is None
    assert report.as_dict()["sources"][0]["state"] == state
    (record,) = kept.records
    assert (record.operation, record.status, record.error) == ("status", "ok", None)
    assert record.repository == str(tmp_path / "primary")
    assert record.details == {"states": {"uploads": state}}


def test_status_of_a_missing_repository_is_a_failed_run(tmp_path: Path) -> None:
    config = tmp_path / "medvault.toml"
    config.write_text(f'[repository.primary]\nurl = "{tmp_path / "nothing-here"}"\n')
    kept = Kept()
    with pytest.raises(RepositoryNotFound):
        status(session(kept, config))
    (record,) = kept.records
    assert (record.operation, record.status) == ("status", "failed")
    assert record.error is not None and "no medvault repository" in record.error


# -- wal-push, wal-fetch, wal-status ---------------------------------------------------------


def wal_world(tmp_path: Path) -> Path:
    """A local repository (passphrase) and a PostgreSQL source whose server is nowhere."""
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.primary]\nurl = "{tmp_path / "repo"}"\n\n'
        '[source.emr]\nkind = "postgres"\ndsn = "host=/nowhere dbname=emr"\n'
        f'pgdata = "{tmp_path / "pgdata"}"\nrepository = "primary"\n'
    )
    cli = Cli("primary", tmp_path, tmp_path / "repo")
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli("init")
    return config


def segment(folder: Path, number: int, cluster: int = CLUSTER) -> Path:
    name = f"{1:08X}{0:08X}{number:08X}"
    path = folder / name
    path.write_bytes(crafted_segment(name, cluster, 16 * MiB))
    return path


def test_a_pushed_segment_is_fetched_back_and_each_is_one_run(tmp_path: Path) -> None:
    config = wal_world(tmp_path)
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    pushed = segment(pg_wal, 1)
    kept = Kept()
    current = session(kept, config)

    result = push(current, PushOptions("emr", str(pushed)))
    assert (result.name, result.from_spool, result.not_replicated) == (pushed.name, False, None)
    # A plain setup is read with tomllib alone: the validated settings (pydantic) never load.
    assert current._settings is None

    found = fetch(current, "emr", pushed.name, str(tmp_path / "back"))
    assert found.found and (tmp_path / "back").read_bytes() == pushed.read_bytes()
    missing = fetch(current, "emr", "000000010000000000000009", str(tmp_path / "none"))
    assert not missing.found and not (tmp_path / "none").exists()

    assert [(r.operation, r.source, r.status) for r in kept.records] == [
        ("wal-push", "emr", "ok"),
        ("wal-fetch", "emr", "ok"),
        ("wal-fetch", "emr", "ok"),
    ]
    assert {r.repository for r in kept.records} == {str(tmp_path / "repo")}
    assert [r.details.get("found") for r in kept.records[1:]] == [True, False]


def test_a_push_that_is_refused_or_fails_leaves_its_record(tmp_path: Path) -> None:
    config = wal_world(tmp_path)
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    kept = Kept()
    current = session(kept, config)
    push(current, PushOptions("emr", str(segment(pg_wal, 1))))

    with pytest.raises(WalConflict):
        push(current, PushOptions("emr", str(segment(pg_wal, 2, cluster=CLUSTER + 1))))
    (pg_wal / "not-a-wal-name").write_bytes(b"x")
    with pytest.raises(UsageError):
        push(current, PushOptions("emr", str(pg_wal / "not-a-wal-name")))

    ok, conflict, refused = kept.records
    assert ok.status == "ok"
    assert conflict.status == "failed" and conflict.error is not None
    assert f"holds cluster {CLUSTER}" in conflict.error
    assert refused.status == "refused" and "not a WAL file name" in (refused.error or "")


def test_an_asynchronous_push_takes_the_ready_files_and_they_are_acknowledged_without_a_session(
    tmp_path: Path,
) -> None:
    config = wal_world(tmp_path)
    pg_wal = tmp_path / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    first, second = segment(pg_wal, 1), segment(pg_wal, 2)
    for path in (first, second):
        (pg_wal / "archive_status" / f"{path.name}.ready").touch()
    kept = Kept()

    result = push(session(kept, config), PushOptions("emr", str(first), force_async=True))
    assert (result.name, result.pushed_ahead) == (first.name, (second.name,))
    (record,) = kept.records
    assert (record.operation, record.status) == ("wal-push", "ok")

    wal = light_wal_settings(str(config), None, "emr")
    assert wal is not None
    assert acknowledged(wal, PushOptions("emr", str(second), force_async=True))
    assert not acknowledged(wal, PushOptions("emr", str(second), force_async=True)), "once"
    assert not acknowledged(wal, PushOptions("emr", str(first), force_async=False))


def test_wal_status_reports_a_gap_and_an_unreachable_server(tmp_path: Path) -> None:
    config = wal_world(tmp_path)
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    kept = Kept()
    current = session(kept, config)
    for number in (1, 2, 4):
        push(current, PushOptions("emr", str(segment(pg_wal, number))))

    report = wal_status(current, "emr")
    assert report.system_identifier == str(CLUSTER) and report.segment_size == 16 * MiB
    (timeline,) = report.timelines
    assert (timeline.timeline, timeline.count, timeline.missing) == (
        1,
        3,
        ["000000010000000000000003"],
    )
    assert report.archiver is None and report.archiver_error is not None
    assert report.problems[0] == "timeline 1: 1 missing: 000000010000000000000003"
    assert report.problems[-1] == report.archiver_error and not report.healthy
    record = kept.records[-1]
    assert (record.operation, record.source, record.status) == ("wal-status", "emr", "ok")
    assert record.details == {"problems": 2}


# -- medvault.toml for the WAL path ---------------------------------------------------------


def test_the_light_reader_and_the_validated_settings_agree(tmp_path: Path) -> None:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.primary]\nurl = "{tmp_path / "repo"}"\nkey_file = "/etc/medvault/k"\n\n'
        '[tier.critical]\nrpo = "15m"\nrto = "1h"\n\n'
        '[source.emr]\nkind = "postgres"\ndsn = "host=/run/postgresql dbname=emr"\n'
        'pgdata = "/srv/pg"\nwal_async = true\nwal_spool = "/srv/spool"\ntier = "critical"\n'
        'repository = "primary"\n'
    )
    light = light_wal_settings(str(config), None, "emr")
    full = full_wal_settings(load_settings(str(config)), str(config), None, "emr")
    assert light is not None
    fields = ("source", "url", "wal_async", "wal_spool", "dsn", "pgdata", "secondary")
    assert [getattr(light, f) for f in fields] == [getattr(full, f) for f in fields]
    assert light.keys is not None and full.repository is not None
    assert light.keys.key_file == full.repository.key_file == "/etc/medvault/k"


def test_the_light_reader_leaves_anything_unusual_to_the_validated_settings(
    tmp_path: Path,
) -> None:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.primary]\nurl = "{tmp_path / "repo"}"\nsecondary = "offsite"\n\n'
        f'[repository.offsite]\nurl = "{tmp_path / "offsite"}"\n\n'
        '[source.emr]\nkind = "postgres"\ndsn = "dbname=emr"\nrepository = "primary"\n'
    )
    assert light_wal_settings(str(config), None, "emr") is None
    full = full_wal_settings(load_settings(str(config)), str(config), None, "emr")
    assert (full.secondary, full.secondary_url) == ("offsite", str(tmp_path / "offsite"))
