"""The long-lived session `serve` keeps: repositories opened every minute without a key
derivation each time, and nothing piling up between rounds."""

from __future__ import annotations

from pathlib import Path

from conftest import PASSWORD
from medvault.repository.keys import Credential
from medvault.service.admin import InitOptions, init
from medvault.service.session import Session
from test_service_runs import NIGHT_SHIFT, Given


def test_a_kept_key_opens_the_repository_again_without_asking(tmp_path: Path) -> None:
    url = str(tmp_path / "vault")
    init(
        Session(credentials=Given(PASSWORD), caller=NIGHT_SHIFT, repository=url),
        InitOptions(credential=Credential(passphrase=PASSWORD.encode())),
    )
    asked = Given(PASSWORD)
    session = Session(credentials=asked, caller=NIGHT_SHIFT, repository=url, keep_keys=True)
    first = session.open()
    assert session.release() == []
    second = session.open()
    assert asked.asked == ["primary"]
    assert second.config.repo_id == first.config.repo_id
    session.release()
    assert session.opened_repository(url) is None


def test_without_keep_keys_every_opening_asks(tmp_path: Path) -> None:
    url = str(tmp_path / "vault")
    init(
        Session(credentials=Given(PASSWORD), caller=NIGHT_SHIFT, repository=url),
        InitOptions(credential=Credential(passphrase=PASSWORD.encode())),
    )
    asked = Given(PASSWORD)
    session = Session(credentials=asked, caller=NIGHT_SHIFT, repository=url)
    session.open()
    session.open()
    assert asked.asked == ["primary", "primary"]
