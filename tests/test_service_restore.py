"""Restores through the service layer, as every shell runs them: what comes back, and the one
record each leaves (what was restored, from which snapshot, where to, why, by whom)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pgcluster import MEDVAULT, PgWorld, make_pg_tempdir, running_clusters

from conftest import PASSWORD
from medvault.config import RepositorySettings
from medvault.credentials import CredentialOptions
from medvault.errors import RestoreTargetError, UsageError, WrongPassphrase, first_line
from medvault.repository.keys import Credential, read_keyfile
from medvault.repository.repo import Repository
from medvault.service.pitr import (
    BaseBackup,
    MarkOptions,
    PitrOptions,
    RecoverySetup,
    WalFetchAccess,
    mark,
    pitr,
    restore_command,
)
from medvault.service.restore import (
    FilesRestoreOptions,
    FilesRestoreResult,
    RestoreOptions,
    restore,
    restore_files,
)
from medvault.service.session import Session
from medvault.sources.files import BackupOptions, backup_files
from test_service_runs import NIGHT_SHIFT, Given, Kept

CHART = b"BP 120/80, pulse 64\n" * 500
NOTE = b"discharged\n"


def _session(url: str, kept: Kept, passphrase: str = PASSWORD) -> Session:
    return Session(
        credentials=Given(passphrase), caller=NIGHT_SHIFT, repository=url, observers=[kept]
    )


@pytest.fixture
def backed_up(repo: Repository, tmp_path: Path) -> tuple[str, str]:
    """A repository holding one files snapshot of a two-file tree: (its URL, the snapshot)."""
    data = tmp_path / "data"
    (data / "ward").mkdir(parents=True)
    (data / "ward" / "chart.txt").write_bytes(CHART)
    (data / "note.txt").write_bytes(NOTE)
    done = backup_files(repo, BackupOptions(source="charts", paths=[str(data)]))
    return repo.backend.url, done.snapshot.id


def test_a_files_restore_returns_what_it_wrote_and_records_target_reason_and_bytes(
    backed_up: tuple[str, str], tmp_path: Path
) -> None:
    url, snapshot = backed_up
    kept = Kept()
    out = tmp_path / "out"
    result = restore_files(
        _session(url, kept),
        FilesRestoreOptions(snapshot="latest", target=str(out), reason="ticket 4711"),
    )
    assert result.snapshot_id == snapshot and result.target == str(out)
    assert result.written.files == 2 and result.written.bytes_written == len(CHART) + len(NOTE)
    assert next(out.rglob("chart.txt")).read_bytes() == CHART
    (record,) = kept.records
    assert (record.operation, record.source, record.status, record.error) == (
        "restore",
        "charts",
        "ok",
        None,
    )
    assert record.repository == url and record.snapshots == (snapshot,)
    assert record.bytes_restored == len(CHART) + len(NOTE)
    assert record.details["target"] == str(out) and record.details["reason"] == "ticket 4711"
    assert record.details["kind"] == "files"


def test_a_restore_record_answers_the_auditor_from_the_record_itself(
    backed_up: tuple[str, str], tmp_path: Path
) -> None:
    """Who restored which data of what classification, from when, to where, and why."""
    url, snapshot = backed_up
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.main]\nurl = "{url}"\n'
        '[tier.medical]\nfloor = "7y"\nclassification = "phi"\ncompliance = ["hipaa"]\n'
        "[tier.medical.retention]\nkeep_daily = 7\nkeep_yearly = 7\n"
        f'[source.charts]\nkind = "files"\npaths = ["{tmp_path}"]\ntier = "medical"\n'
    )
    kept = Kept()
    session = Session(
        credentials=Given(PASSWORD), caller=NIGHT_SHIFT, config=str(config), observers=[kept]
    )
    out = tmp_path / "out"
    restore(session, RestoreOptions(snapshot="latest", target=str(out), reason="INC-2231"))
    (record,) = kept.records
    assert (record.user, record.host, record.shell) == ("dr.smith", "backup-1", "scheduler")
    assert record.snapshots == (snapshot,) and record.source == "charts"
    assert record.destination == str(out) and record.justification == "INC-2231"
    assert record.recovery_point is not None and record.recovery_point.startswith("20")
    assert record.data_classification == "phi" and record.compliance_flags == ("hipaa",)
    assert record.retention_policy == "tier medical, floor 7y; keep daily 7, yearly 7"
    assert record.encryption is not None and "AES-256-GCM" in record.encryption
    assert record.approver is None and record.timestamp == record.ended


def test_a_restore_over_existing_files_without_overwrite_fails_and_keeps_them(
    backed_up: tuple[str, str], tmp_path: Path
) -> None:
    url, snapshot = backed_up
    kept = Kept()
    session = _session(url, kept)
    out = tmp_path / "out"
    restore_files(session, FilesRestoreOptions(snapshot=snapshot, target=str(out)))
    edited = next(out.rglob("note.txt"))
    edited.write_bytes(b"local edit")
    with pytest.raises(RestoreTargetError, match="--overwrite"):
        restore_files(session, FilesRestoreOptions(snapshot=snapshot, target=str(out)))
    assert edited.read_bytes() == b"local edit"
    record = kept.records[-1]
    assert record.status == "failed" and record.snapshots == (snapshot,)
    assert record.error is not None and "--overwrite" in record.error and "\n" not in record.error
    assert record.bytes_restored == 0
    restore_files(session, FilesRestoreOptions(snapshot=snapshot, target=str(out), overwrite=True))
    assert edited.read_bytes() == NOTE and kept.records[-1].status == "ok"


def test_an_empty_include_is_refused_before_a_credential_is_asked_for(
    backed_up: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = backed_up
    kept = Kept()
    session = _session(url, kept)
    with pytest.raises(UsageError, match="--include ''"):
        restore_files(
            session, FilesRestoreOptions(snapshot="latest", target=str(tmp_path), includes=("",))
        )
    assert isinstance(session.credentials, Given) and session.credentials.asked == []
    (record,) = kept.records
    assert record.status == "refused" and record.snapshots == ()


def test_a_wrong_passphrase_fails_with_the_errors_first_line(
    backed_up: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = backed_up
    kept = Kept()
    with pytest.raises(WrongPassphrase) as raised:
        restore_files(
            _session(url, kept, "not the passphrase"),
            FilesRestoreOptions(snapshot="latest", target=str(tmp_path / "out")),
        )
    (record,) = kept.records
    assert (record.operation, record.status) == ("restore", "failed")
    assert record.error == first_line(raised.value)
    assert not (tmp_path / "out").exists()


def test_the_snapshots_kind_decides_and_a_recovery_target_is_for_physical_ones_only(
    backed_up: tuple[str, str], tmp_path: Path
) -> None:
    url, snapshot = backed_up
    kept = Kept()
    session = _session(url, kept)
    restored = restore(session, RestoreOptions(snapshot=snapshot, target=str(tmp_path / "a")))
    assert isinstance(restored, FilesRestoreResult) and restored.written.files == 2
    with pytest.raises(UsageError, match="applies to physical"):
        restore(
            session,
            RestoreOptions(
                snapshot=snapshot,
                target=str(tmp_path / "b"),
                recovery=RecoverySetup(recovery_target="latest"),
            ),
        )
    with pytest.raises(UsageError, match="--target DIR"):
        restore(session, RestoreOptions(snapshot=snapshot))
    assert [r.status for r in kept.records] == ["ok", "refused", "refused"]
    assert not (tmp_path / "b").exists()


def test_restore_command_spells_out_program_repository_and_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDVAULT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./medvault.toml
    session = Session(credentials=Given(PASSWORD), caller=NIGHT_SHIFT, repository="vault")
    access = WalFetchAccess(
        program="/opt/medvault/bin/medvault", credential=CredentialOptions(key_file="emr.key")
    )
    assert restore_command(session, "emr", access) == (
        f"/opt/medvault/bin/medvault --repo {tmp_path}/vault --key-file {tmp_path}/emr.key "
        "wal-fetch emr %f %p"
    )
    with pytest.raises(UsageError, match="--key-file or --password-file"):
        restore_command(session, "emr", WalFetchAccess(program="/usr/bin/medvault"))
    with pytest.raises(UsageError, match="cannot find the medvault program"):
        restore_command(session, "emr", WalFetchAccess(credential=access.credential))


# -- PostgreSQL: one archiving cluster, one base backup -----------------------------------


class KeyFile:
    """The credential source of a host whose repository opens with a key file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def primary(self, settings: RepositorySettings | None) -> Credential:
        return Credential(keyfile_secret=read_keyfile(str(self.path)))

    def other(self, settings: RepositorySettings | None) -> Credential:
        return self.primary(settings)


@pytest.fixture(scope="module")
def physical_backup() -> Iterator[tuple[PgWorld, str]]:
    base = make_pg_tempdir("medvault-service-restore-")
    with running_clusters() as clusters:
        world = PgWorld(base, clusters)
        world.start_archiving_cluster()
        done = world.cli("backup", "emr", "--type", "full", "--json")
        yield world, json.loads(done.stdout)["snapshot"]
    shutil.rmtree(base, ignore_errors=True)


def _pg_session(world: PgWorld, kept: Kept) -> Session:
    return Session(
        credentials=KeyFile(world.key_file),
        caller=NIGHT_SHIFT,
        config=str(world.config),
        observers=[kept],
    )


def test_pitr_restores_the_chosen_base_backup_and_records_the_recovery(
    physical_backup: tuple[PgWorld, str],
) -> None:
    world, snapshot = physical_backup
    kept = Kept()
    chosen: list[BaseBackup] = []
    pgdata = world.base / "pitr-immediate"
    result = pitr(
        _pg_session(world, kept),
        PitrOptions(
            source="emr",
            pgdata=str(pgdata),
            recovery=RecoverySetup(
                recovery_target="immediate", wal_fetch=WalFetchAccess(program=MEDVAULT)
            ),
            reason="restore test before the upgrade",
        ),
        on_chosen=chosen.append,
    )
    assert [c.snapshot_id for c in chosen] == [snapshot] and result.snapshot_id == snapshot
    assert result.target.kind == "immediate" and result.reached is None
    assert result.signal == "recovery.signal" and result.wal.first <= result.wal.last
    conf = (pgdata / "postgresql.auto.conf").read_text()
    assert f"{MEDVAULT} --config {world.config} wal-fetch emr %f %p" in conf
    (record,) = kept.records
    assert (record.operation, record.source, record.status) == ("pitr", "emr", "ok")
    assert record.snapshots == (snapshot,)
    assert record.bytes_restored == result.written.bytes_written > 0
    assert record.details["pgdata"] == str(pgdata)
    assert record.details["recovery_target"] == "immediate"
    assert record.details["reason"] == "restore test before the upgrade"


def test_mark_names_a_restore_point_of_the_only_postgres_source(
    physical_backup: tuple[PgWorld, str],
) -> None:
    world, _ = physical_backup
    kept = Kept()
    point = mark(_pg_session(world, kept), MarkOptions(name="before-upgrade"))
    assert point.source == "emr" and point.name == "before-upgrade" and point.lsn
    (record,) = kept.records
    assert (record.operation, record.source, record.status) == ("mark", "emr", "ok")
    assert record.details["name"] == "before-upgrade" and record.details["lsn"] == point.lsn
