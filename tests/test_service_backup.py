"""Backups through the service layer, as the API and the scheduler will run them: the result
a shell renders, and the one run record each backup leaves, however it ends."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.pgcluster import PgWorld
from tests.test_service_runs import NIGHT_SHIFT, Given, Kept

from conftest import PASSWORD
from medvault.backends import open_backend
from medvault.config import RepositorySettings
from medvault.errors import SourceUnavailable, UsageError, WrongPassphrase
from medvault.repository.keys import Credential, read_keyfile
from medvault.repository.repo import Repository
from medvault.service.backup import (
    BackupOptions,
    FilesBackupOptions,
    FilesBackupResult,
    LogicalBackupOptions,
    PhysicalBackupOptions,
    backup,
    backup_files,
    backup_logical,
    backup_physical,
)
from medvault.service.session import Session

MakeTree = Callable[[dict[str, bytes | str]], Path]


class KeyFile:
    """The credential of a repository made with --new-key-file, from memory."""

    def __init__(self, path: Path) -> None:
        self.secret = read_keyfile(str(path))

    def primary(self, settings: RepositorySettings | None) -> Credential:
        return Credential(keyfile_secret=self.secret)

    def other(self, settings: RepositorySettings | None) -> Credential:
        return Credential(keyfile_secret=self.secret)


def new_repository(path: Path) -> str:
    Repository.init(open_backend(str(path)), Credential(passphrase=PASSWORD.encode()))
    return str(path)


def session(kept: Kept, repository: str | None = None, passphrase: str = PASSWORD) -> Session:
    return Session(
        credentials=Given(passphrase), caller=NIGHT_SHIFT, repository=repository, observers=[kept]
    )


# -- files ---------------------------------------------------------------------------------


def test_a_files_backup_returns_its_snapshot_and_records_bytes(
    tmp_path: Path, make_tree: MakeTree
) -> None:
    data = make_tree({"scan.dcm": os.urandom(300_000), "notes/visit.txt": b"BP 120/80\n" * 100})
    kept = Kept()
    url = new_repository(tmp_path / "repo")
    result = backup_files(
        session(kept, url), FilesBackupOptions(paths=(str(data),), tags=("nightly",))
    )
    assert isinstance(result, FilesBackupResult) and result.complete
    assert (result.files_new, result.snapshot.source) == (2, "files")
    assert result.snapshot.tags == ("nightly",)
    assert result.replication.replicated_to is None and result.replication.error is None
    (record,) = kept.records
    assert (record.operation, record.source, record.status, record.error) == (
        "backup",
        "files",
        "ok",
        None,
    )
    assert record.repository == url and record.snapshots == (result.snapshot.id,)
    assert record.bytes_read == result.bytes_read >= 300_000
    assert record.bytes_stored == result.bytes_added > 0
    assert record.details == {"kind": "files", "type": "full", "parent": None}


def test_a_configured_source_brings_its_paths_tags_and_excludes(
    tmp_path: Path, make_tree: MakeTree
) -> None:
    data = make_tree({"chart.pdf": b"%PDF chart", "cache/tmp.bin": b"scratch"})
    url = new_repository(tmp_path / "repo")
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.primary]\nurl = "{url}"\n\n'
        f'[source.uploads]\nkind = "files"\npaths = ["{data}"]\ntags = ["emr"]\n'
        'exclude = ["cache"]\nrepository = "primary"\n'
    )
    kept = Kept()
    current = Session(
        credentials=Given(PASSWORD), caller=NIGHT_SHIFT, config=str(config), observers=[kept]
    )
    result = backup(current, BackupOptions(targets=("uploads",), tags=("manual",)))
    assert isinstance(result, FilesBackupResult)
    assert result.snapshot.source == "uploads" and result.snapshot.tags == ("emr", "manual")
    assert result.files_new == 1  # cache/ left out
    assert kept.records[0].source == "uploads" and kept.records[0].status == "ok"


def test_the_repository_inside_the_backed_up_tree_is_left_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"a")
    url = new_repository(data / "repo")
    result = backup_files(session(Kept(), url), FilesBackupOptions(paths=(str(data),)))
    assert result.files_new == 1


@contextlib.contextmanager
def unprivileged(user: str = "nobody") -> Iterator[None]:
    """As an unprivileged user, for whom a mode-000 file really is unreadable (root reads
    anything). The effective uid changes for every thread of this process, then returns."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(pwd.getpwnam(user).pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)


def test_an_unreadable_file_makes_the_backup_incomplete() -> None:
    work = Path(tempfile.mkdtemp(prefix="medvault-service-unreadable-"))
    try:
        work.chmod(0o755)
        data = work / "data"
        data.mkdir()
        (data / "ok.txt").write_bytes(b"readable")
        secret = data / "secret.txt"
        secret.write_bytes(b"no one may read this")
        secret.chmod(0o000)
        repo_dir = work / "repo"
        repo_dir.mkdir()
        os.chown(repo_dir, pwd.getpwnam("nobody").pw_uid, -1)
        kept = Kept()
        with unprivileged():
            url = new_repository(repo_dir / "r")
            result = backup_files(session(kept, url), FilesBackupOptions(paths=(str(data),)))
        assert not result.complete
        assert [p.path for p in result.unreadable] == [str(secret)]
        (record,) = kept.records
        assert record.status == "incomplete" and record.snapshots == (result.snapshot.id,)
        assert record.error == "1 file(s) could not be read consistently"
    finally:
        shutil.rmtree(work)


def test_a_bad_type_is_refused_before_anything_is_opened(tmp_path: Path) -> None:
    kept = Kept()
    credentials = Given(PASSWORD)
    refused = Session(credentials=credentials, caller=NIGHT_SHIFT, observers=[kept])
    with pytest.raises(UsageError, match="--type must be one of full, incremental"):
        backup(refused, BackupOptions(targets=(str(tmp_path),), backup_type="weekly"))
    (record,) = kept.records
    assert (record.operation, record.status) == ("backup", "refused")
    assert record.error is not None and record.error.startswith("--type must be one of")
    assert credentials.asked == [] and record.snapshots == ()


def test_logical_without_a_postgres_source_is_refused(tmp_path: Path) -> None:
    kept = Kept()
    with pytest.raises(UsageError, match="--logical and --database need a PostgreSQL source"):
        backup(session(kept), BackupOptions(targets=(str(tmp_path),), logical=True))
    assert kept.records[0].status == "refused"


def test_a_missing_path_fails_with_its_first_line(tmp_path: Path) -> None:
    kept = Kept()
    url = new_repository(tmp_path / "repo")
    missing = tmp_path / "no-such-dir"
    with pytest.raises(SourceUnavailable):
        backup_files(session(kept, url), FilesBackupOptions(paths=(str(missing),)))
    (record,) = kept.records
    assert (record.status, record.error) == ("failed", f"path {missing} does not exist")
    assert record.snapshots == ()


def test_a_wrong_passphrase_fails_and_saves_nothing(tmp_path: Path, make_tree: MakeTree) -> None:
    data = make_tree({"a.txt": b"a"})
    kept = Kept()
    url = new_repository(tmp_path / "repo")
    with pytest.raises(WrongPassphrase):
        backup_files(
            session(kept, url, passphrase="Tr0ub4dor&3"), FilesBackupOptions(paths=(str(data),))
        )
    (record,) = kept.records
    assert record.status == "failed" and record.error is not None
    assert "\n" not in record.error and record.snapshots == ()


# -- replication -----------------------------------------------------------------------------


def replicating_config(tmp_path: Path, data: Path, secondary: str) -> Path:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.primary]\nurl = "{tmp_path / "primary"}"\nsecondary = "offsite"\n'
        f'replicate = true\n\n[repository.offsite]\nurl = "{secondary}"\n\n'
        f'[source.uploads]\nkind = "files"\npaths = ["{data}"]\nrepository = "primary"\n'
    )
    return config


def test_a_new_snapshot_is_replicated_to_the_secondary_and_recorded(
    tmp_path: Path, make_tree: MakeTree
) -> None:
    data = make_tree({"scan.dcm": os.urandom(100_000)})
    primary = Repository.init(
        open_backend(str(tmp_path / "primary")), Credential(passphrase=PASSWORD.encode())
    )
    offsite = tmp_path / "offsite"
    Repository.init(
        open_backend(str(offsite)), Credential(passphrase=PASSWORD.encode()), like=primary
    )
    config = replicating_config(tmp_path, data, str(offsite))
    kept = Kept()
    current = Session(
        credentials=Given(PASSWORD), caller=NIGHT_SHIFT, config=str(config), observers=[kept]
    )
    result = backup_files(current, FilesBackupOptions(source="uploads"))
    assert result.replication.replicated_to == "offsite" and result.replication.error is None
    copy = Repository.open(open_backend(str(offsite)), Credential(passphrase=PASSWORD.encode()))
    assert [s.id for s in copy.list_snapshots()] == [result.snapshot.id]
    (record,) = kept.records
    assert record.status == "ok" and record.details["replicated_to"] == "offsite"


def test_a_secondary_that_is_down_leaves_an_incomplete_run_and_the_primary_copy(
    tmp_path: Path, make_tree: MakeTree
) -> None:
    data = make_tree({"note.txt": b"Seen in clinic.\n" * 50})
    new_repository(tmp_path / "primary")
    config = replicating_config(tmp_path, data, str(tmp_path / "never-made"))
    kept = Kept()
    current = Session(
        credentials=Given(PASSWORD), caller=NIGHT_SHIFT, config=str(config), observers=[kept]
    )
    result = backup(current, BackupOptions(source="uploads"))
    assert result.complete and result.replication.replicated_to is None
    error = result.replication.error
    assert error is not None and "is stored in the primary" in error and "medvault copy" in error
    (record,) = kept.records
    assert (record.status, record.error) == ("incomplete", error)
    assert record.snapshots == (result.snapshot.id,)


# -- PostgreSQL ------------------------------------------------------------------------------


def pg_session(world: PgWorld, kept: Kept) -> Session:
    return Session(
        credentials=KeyFile(world.key_file),
        caller=NIGHT_SHIFT,
        config=str(world.config),
        observers=[kept],
    )


def test_a_physical_backup_through_the_service(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster()
    cluster.execute("CREATE TABLE encounters AS SELECT g FROM generate_series(1, 5000) g")
    time.sleep(1.1)  # files written within a second of a backup's start are read again
    kept = Kept()
    result = backup_physical(
        pg_session(pg_world, kept), PhysicalBackupOptions("emr", backup_type="full")
    )
    assert result.complete and result.snapshot.kind == "postgres.physical"
    assert result.snapshot.tier == "critical" and result.facts.method == "local"
    assert result.start_lsn.count("/") == 1 and result.notes == ()
    (record,) = kept.records
    assert (record.source, record.status, record.snapshots) == (
        "emr",
        "ok",
        (result.snapshot.id,),
    )
    assert record.bytes_read == result.files.bytes_read > 0
    assert record.details == {
        "kind": "postgres.physical",
        "type": "full",
        "parent": None,
        "method": "local",
    }


def test_a_logical_backup_through_the_service(pg_world: PgWorld) -> None:
    pg_world.init_repository()
    pg_world.write_config()
    cluster = pg_world.cluster
    cluster.initdb()
    cluster.start()
    cluster.execute("CREATE TABLE patients AS SELECT g AS id FROM generate_series(1, 1234) g")
    kept = Kept()
    result = backup(
        pg_session(pg_world, kept), BackupOptions(targets=("emr",), logical=True, tags=("x",))
    )
    assert result.snapshot.kind == "postgres.logical" and result.snapshot.tags == ("x",)
    assert result.row_counts == {"public.patients": 1234}  # type: ignore[union-attr]
    (record,) = kept.records
    assert (record.source, record.status, record.snapshots) == (
        "emr",
        "ok",
        (result.snapshot.id,),
    )
    assert record.details["database"] == "postgres" and record.bytes_stored > 0
    assert record.repository == str(pg_world.repo)


def test_a_logical_backup_needs_a_postgres_source() -> None:
    kept = Kept()
    with pytest.raises(UsageError, match="not a PostgreSQL source"):
        backup_logical(session(kept), LogicalBackupOptions("uploads"))
    assert kept.records[0].status == "refused"
