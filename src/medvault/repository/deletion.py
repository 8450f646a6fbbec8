"""Every deletion medvault performs in a repository, and the two overwrites.

Deleting is the one operation that can lose a backup, so all of it is here, each kind in a
function of its own that says why it is allowed; nothing else calls `Backend.delete`
(tests/test_engine.py checks). Each function deletes only within its own folder: the name
is built here from an id, or checked to lie in that folder. Whether a deletion is wise
(which packs no snapshot needs, which WAL no backup needs) is decided by the callers named
below; here each kind is named, confined to its folder, and its reason written down.

The store has the last word: on an append-only repository or under Object Lock it refuses
(ObjectLocked), and the callers keep the object and say so.

Overwrites replace bytes that failed authentication with bytes that pass it
(`replace_damaged`), and locks rewrite themselves (repository/locks.py: a lock object is
its holder's alone, and rewriting it is how it stays alive). Nothing else is overwritten.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import TYPE_CHECKING

from medvault.errors import ObjectNotFound

if TYPE_CHECKING:
    from medvault.backends import Backend
    from medvault.repository.repo import Repository


def forget_snapshot(repo: Repository, snapshot_id: str) -> None:
    """`forget`: the snapshot object only. Its data stays until a prune finds that no
    snapshot needs it. The caller holds the exclusive lock (no backup is committing a
    snapshot that names this one as parent meanwhile) and has checked for a legal hold."""
    repo.backend.delete(f"snapshots/{snapshot_id}")


def snapshot_refusal(repo: Repository, snapshot_id: str) -> str | None:
    """Why the store would refuse `forget_snapshot` now, for a dry run; None when it would
    not."""
    if repo.backend.immutable:
        return "the repository is append-only"
    until = repo.backend.retention(f"snapshots/{snapshot_id}")
    if until is not None and until > dt.datetime.now(dt.UTC):
        return f"it is locked until {until:%Y-%m-%d %H:%M} UTC"
    return None


def pack(repo: Repository, pack_id: str) -> None:
    """Prune, phase 2: a pack condemned by a record that every lock live at the time has
    outlived, re-checked against today's snapshots, and no longer named by any index
    (repository/prune.py)."""
    from medvault.repository.repo import pack_name

    repo.backend.delete(pack_name(pack_id))


def superseded_index(repo: Repository, index_id: str) -> None:
    """Prune: an index object naming packs about to be deleted, once the index that replaces
    it (naming every other pack it named) is stored."""
    repo.backend.delete(f"index/{index_id}")


def prune_record(repo: Repository, name: str) -> None:
    """Prune: a condemned or waits record under prune/, once its packs are gone (or, for a
    waits record, once its condemned record is)."""
    if not name.startswith("prune/"):
        raise ValueError(f"{name} is not a prune record")
    repo.backend.delete(name)


def wal_object(repo: Repository, object_name: str) -> None:
    """WAL retention: an archived segment that ends before the start of the oldest retained
    physical backup of its source and was archived before the source's PITR window
    (sources/postgres/wal.py `prune_wal`). History files, backup labels and the cluster
    record are never passed here."""
    if not object_name.startswith("wal/"):
        raise ValueError(f"{object_name} is not a WAL object")
    repo.backend.delete(object_name)


def hold_record(repo: Repository, snapshot_id: str) -> None:
    """Releasing a legal hold: the hold record, once the release record (with its reason)
    is stored, so that a hold never ends without a trace (policy/holds.py)."""
    repo.backend.delete(f"holds/{snapshot_id}")


def key_slot(repo: Repository, slot_id: str) -> None:
    """`key remove`, `key passwd`: a key slot, under the key-change lock, when another usable
    slot stays (removal) or its replacement is stored (a new passphrase)."""
    repo.backend.delete(f"keys/{slot_id}")


def orphan_key_slot(backend: Backend, name: str) -> None:
    """`init` again after an init killed between its key slot and its config: with no
    config, no data, snapshot or WAL, the slots wrap a master key that never encrypted
    anything (Repository.init checks that first)."""
    if not name.startswith("keys/"):
        raise ValueError(f"{name} is not a key slot")
    backend.delete(name)


def lock(backend: Backend, name: str) -> None:
    """A lock object: released by its holder, withdrawn by a writer that found a conflict,
    a store-clock probe, or one `unlock` judged stale or malformed (or every lock, with
    --remove-all, by an operator's decision). Locks coordinate writers and hold no backup
    data; an absent one is released already."""
    if not name.startswith("locks/"):
        raise ValueError(f"{name} is not a lock")
    with contextlib.suppress(ObjectNotFound):
        backend.delete(name)


def replace_damaged(repo: Repository, name: str, data: bytes) -> None:
    """Overwrite an object whose stored bytes fail authentication with `data`, which the
    caller has proved to be that object (a WAL file pushed again by its cluster; a copy from
    the secondary whose hash or seal checks out, repository/repair.py). Damaged bytes hold
    nothing to lose."""
    repo.store_object(name, data, overwrite=True)
