"""Key slots: list, add, remove, change a passphrase.

A new passphrase or key file secret comes in from the shell, never from here: as a
`Credential`, or as a `NewCredential` the operation calls only once it knows it will use it
(after the repository opened and the checks passed), so that a shell that prompts asks no
question it did not need and writes no key file that would open nothing. Run records name
slot ids, kinds and labels, never key material.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault.errors import UsageError

if TYPE_CHECKING:
    from medvault.config import RepositorySettings
    from medvault.repository.keys import Credential
    from medvault.service.session import Session

# Asked for a new passphrase or key when the operation needs it; the settings are those of
# the repository it is for (init reads a passphrase configured there).
NewCredential = Callable[["RepositorySettings | None"], "Credential"]


@dataclass(frozen=True)
class KeySlotInfo:
    slot_id: str
    kind: str  # "passphrase" | "keyfile"
    created: str
    host: str
    user: str
    label: str
    current: bool  # the slot that opened the repository in this session
    usable: bool
    problem: str | None  # why it opens nothing, when it is not usable


@dataclass(frozen=True)
class KeyListResult:
    slots: tuple[KeySlotInfo, ...]


@dataclass(frozen=True)
class KeyAddOptions:
    # The new slot's passphrase, unless new_key_file is given.
    credential: Credential | NewCredential | None = None
    new_key_file: str | None = None  # write a new key file here and add a slot for it
    label: str = ""


@dataclass(frozen=True)
class KeyAddResult:
    slot_id: str
    kind: str


@dataclass(frozen=True)
class KeyRemoveResult:
    slot_id: str


@dataclass(frozen=True)
class KeyPasswdResult:
    slot_id: str  # the new slot
    replaced: str  # the slot it replaced


def new_credential(
    value: Credential | NewCredential | None, settings: RepositorySettings | None
) -> Credential:
    if value is None:
        raise UsageError("a new key slot needs a passphrase or a key file")
    return value(settings) if callable(value) else value


def new_keyfile(path: str) -> Credential:
    """A new key file written at `path` (never over an existing file), as a credential."""
    from medvault.repository.keys import Credential, write_keyfile

    if os.path.exists(path):
        raise UsageError(f"{path} already exists; refusing to overwrite a key file")
    try:
        return Credential(keyfile_secret=write_keyfile(path), origin="new key file")
    except OSError as exc:
        raise UsageError(f"cannot write key file {path}: {exc.strerror}") from None


def key_list(session: Session) -> KeyListResult:
    with session.run("key-list") as run:
        repo = session.open()
        run.repository = repo.url
        current = repo.slot.slot_id if repo.slot is not None else None
        slots = tuple(
            KeySlotInfo(
                slot_id=s.slot_id,
                kind=s.kind,
                created=s.created,
                host=s.host,
                user=s.user,
                label=s.label,
                current=s.slot_id == current,
                usable=s.usable,
                problem=s.describe_problem() if not s.usable else None,
            )
            for s in repo.key_slots()
        )
        run.details["slots"] = len(slots)
        return KeyListResult(slots)


def key_add(session: Session, options: KeyAddOptions) -> KeyAddResult:
    with session.run("key-add") as run:
        repo = session.open()
        run.repository = repo.url
        credential = (
            new_keyfile(options.new_key_file)
            if options.new_key_file
            else new_credential(options.credential, None)
        )
        slot = repo.add_key(credential, options.label)
        run.details.update(added_slot=slot.slot_id, kind=slot.kind, label=slot.label)
        return KeyAddResult(slot.slot_id, slot.kind)


def key_remove(session: Session, slot_id: str) -> KeyRemoveResult:
    """Remove the one slot whose id starts with `slot_id` (never the last usable one)."""
    with session.run("key-remove") as run:
        repo = session.open()
        run.repository = repo.url
        slot = repo.find_key(slot_id)
        run.details["slot"] = slot.slot_id
        repo.remove_key(slot.slot_id)
        run.details["removed_slot"] = slot.slot_id
        return KeyRemoveResult(slot.slot_id)


def key_passwd(session: Session, credential: Credential | NewCredential) -> KeyPasswdResult:
    """Rewrap the master key under a new passphrase in place of the slot that opened it."""
    with session.run("key-passwd") as run:
        repo = session.open()
        run.repository = repo.url
        old = repo.slot
        if old is None or old.kind != "passphrase":
            raise UsageError(
                "this repository was opened with a key file; open it with a passphrase"
            )
        slot = repo.change_passphrase(new_credential(credential, None))
        run.details.update(added_slot=slot.slot_id, removed_slot=old.slot_id)
        return KeyPasswdResult(slot.slot_id, old.slot_id)
