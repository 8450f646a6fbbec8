"""The session every shell builds, and the one record every operation leaves, however it
ends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import PASSWORD
from medvault.backends import open_backend
from medvault.config import RepositorySettings
from medvault.errors import IntegrityError, RepositoryLocked, UsageError
from medvault.repository.keys import Credential
from medvault.repository.repo import Repository
from medvault.service.runs import Caller, RunRecord
from medvault.service.session import Session

NIGHT_SHIFT = Caller(user="dr.smith", shell="scheduler", host="backup-1")


class Kept:
    def __init__(self) -> None:
        self.records: list[RunRecord] = []

    def run_ended(self, record: RunRecord) -> None:
        self.records.append(record)


class Broken:
    def run_ended(self, record: RunRecord) -> None:
        raise OSError("catalog disk full")


class Given:
    """A credential source that answers from memory: a session reads no environment."""

    def __init__(self, passphrase: str) -> None:
        self.asked: list[str] = []
        self.passphrase = passphrase

    def primary(self, settings: RepositorySettings | None) -> Credential:
        self.asked.append("primary")
        return Credential(passphrase=self.passphrase.encode())

    def other(self, settings: RepositorySettings | None) -> Credential:
        self.asked.append("other")
        return Credential(passphrase=self.passphrase.encode())


def session(kept: Kept, *more: Broken) -> Session:
    return Session(credentials=Given(PASSWORD), caller=NIGHT_SHIFT, observers=[*more, kept])


def test_a_finished_run_is_one_ok_record_with_who_what_and_how_much() -> None:
    kept = Kept()
    with session(kept).run("backup", source="uploads", repository="/srv/vault") as run:
        run.add_bytes(read=4096, stored=1024)
        run.touched("ab" * 32)
        run.details["tags"] = ["nightly"]
    (record,) = kept.records
    assert (record.operation, record.source, record.repository) == (
        "backup",
        "uploads",
        "/srv/vault",
    )
    assert (record.status, record.error) == ("ok", None)
    assert (record.bytes_read, record.bytes_stored, record.bytes_restored) == (4096, 1024, 0)
    assert record.snapshots == ("ab" * 32,)
    assert (record.user, record.shell, record.host) == ("dr.smith", "scheduler", "backup-1")
    assert record.details == {"tags": ["nightly"]} and record.duration_s >= 0


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (IntegrityError("pack 1a2b is missing\nDETAIL: more"), "failed"),
        (UsageError("--include '' would restore everything"), "refused"),
        (RepositoryLocked("repository is locked: exclusive lock by pid 7"), "refused"),
        (KeyError("bug"), "failed"),
    ],
)
def test_a_run_that_stops_is_recorded_with_the_first_line_and_the_error_goes_on(
    error: Exception, status: str
) -> None:
    kept = Kept()
    with pytest.raises(type(error)), session(kept).run("restore", source="emr"):
        raise error
    (record,) = kept.records
    assert record.status == status
    assert record.error is not None and "\n" not in record.error


def test_an_incomplete_run_says_why() -> None:
    kept = Kept()
    with session(kept).run("backup") as run:
        run.incomplete("2 files could not be read")
    assert kept.records[0].status == "incomplete"
    assert kept.records[0].error == "2 files could not be read"


def test_a_run_that_found_damage_is_failed_though_it_returns_its_result() -> None:
    kept = Kept()
    with session(kept).run("check") as run:
        run.incomplete("one pack unreadable on the secondary")
        run.fail("2 error(s) found: pack 1f2e… is damaged")
    assert kept.records[0].status == "failed"
    assert kept.records[0].error == "2 error(s) found: pack 1f2e… is damaged"


def test_an_observer_that_fails_costs_a_warning_not_the_result() -> None:
    kept = Kept()
    current = session(kept, Broken())
    with current.run("check"):
        pass
    assert kept.records[0].status == "ok"
    assert any("Broken" in w and "catalog disk full" in w for w in current.warnings())


def test_a_session_opens_repositories_with_the_credentials_its_shell_hands_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDVAULT_PASSWORD", raising=False)
    url = str(tmp_path / "repo")
    Repository.init(open_backend(url), Credential(passphrase=PASSWORD.encode()))
    credentials = Given(PASSWORD)
    opened = Session(credentials=credentials, caller=NIGHT_SHIFT, repository=url).open()
    assert opened.config.repo_id and credentials.asked == ["primary"]
    assert "MEDVAULT_PASSWORD" not in os.environ
