"""Key changes at the same moment, on a slow store: the repository never loses its last key
slot, whatever the interleaving."""

from __future__ import annotations

import threading
from pathlib import Path

from conftest import PASSWORD
from medvault.backends import open_backend
from medvault.backends.delayed import DelayedBackend
from medvault.errors import MedvaultError
from medvault.repository.keys import Credential
from medvault.repository.repo import Repository

SECOND = "a second passphrase for the night shift"
DELAY = 0.05  # per request: a distant store


def slow_open(path: Path, passphrase: str) -> Repository:
    backend = DelayedBackend(open_backend(str(path)), DELAY)
    return Repository.open(backend, Credential(passphrase=passphrase.encode()))


def at_once(*actions: threading.Thread) -> None:
    for action in actions:
        action.start()
    for action in actions:
        action.join()


def test_two_removals_at_once_never_remove_both_slots(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    first = Repository.init(open_backend(str(path)), Credential(passphrase=PASSWORD.encode()))
    second_slot = first.add_key(Credential(passphrase=SECOND.encode()))
    assert first.slot is not None
    slots = [first.slot.slot_id, second_slot.slot_id]
    # Each operator removes the other's slot, opened through their own slow connection.
    sessions = [slow_open(path, PASSWORD), slow_open(path, SECOND)]
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def remove(session: Repository, slot_id: str) -> None:
        start.wait()
        try:
            session.remove_key(slot_id)
            outcomes.append("removed")
        except MedvaultError as exc:
            outcomes.append(f"refused: {exc}")

    at_once(
        threading.Thread(target=remove, args=(sessions[0], slots[1])),
        threading.Thread(target=remove, args=(sessions[1], slots[0])),
    )
    remaining = Repository.read_key_slots(open_backend(str(path)))
    assert len(remaining) == 1 or outcomes.count("removed") == 0, outcomes
    assert outcomes.count("removed") <= 1, outcomes
    survivor = PASSWORD if remaining[0].slot_id == slots[0] else SECOND
    Repository.open(open_backend(str(path)), Credential(passphrase=survivor.encode()))
