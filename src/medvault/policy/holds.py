"""Legal holds: a held snapshot is never forgotten, whatever its retention says.

A hold is an object `holds/<snapshot id>` in the repository, sealed and bound to that name:
the reason, who placed it and when. Removing one also needs a reason, and leaves a sealed record
`holds/released/<snapshot id>.<time>` behind, so the history of a hold survives its end.

Where the store has Object Lock, the hold is also the store's: every object the snapshot
needs and the hold record carry an S3 legal hold until the release, so deleting them fails
whoever tries. Elsewhere the records are all there is, and write access to the store can
remove one (docs/operations.md).
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from medvault.errors import (
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    SnapshotNotFound,
    UsageError,
)
from medvault.repository.keys import now_iso
from medvault.repository.records import HOLDS, KIND_HOLD, json_object

if TYPE_CHECKING:
    from medvault.repository.locks import RepositoryLock
    from medvault.repository.repo import Repository

FOLDER = HOLDS


@dataclass(frozen=True)
class Hold:
    snapshot: str
    reason: str
    user: str
    host: str
    time: str
    released: str | None = None  # time of removal, on release records
    release_reason: str | None = None
    released_by: str | None = None  # user@host


def _who() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return user, socket.gethostname()


def _need_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise UsageError('a hold needs a reason (--reason "…"): auditors will ask for it')
    return reason


def add_hold(
    repo: Repository, snapshot_id: str, reason: str, by: tuple[str, str] | None = None
) -> Hold:
    """Place a hold; `by` is (user, host) of whoever asked (the shell's caller), else this
    process's OS user on this host."""
    reason = _need_reason(reason)
    with _hold_change(repo, "hold add"):
        return _add_hold(repo, snapshot_id, reason, by or _who())


def _hold_change(repo: Repository, purpose: str) -> RepositoryLock:
    """Hold changes run one at a time (a lock of scope "holds"), beside backups: a release
    lifts legal holds from objects no other hold needs, which it can only know if no other
    hold is being placed or released meanwhile."""
    return repo.lock(exclusive=False, scope="holds", purpose=purpose)


def _add_hold(repo: Repository, snapshot_id: str, reason: str, by: tuple[str, str]) -> Hold:
    user, host = by
    hold = Hold(snapshot_id, reason, user, host, now_iso())
    try:
        repo.store_record(f"{FOLDER}/{snapshot_id}", _encode(hold), KIND_HOLD)
    except ObjectExists:
        # Placing it again completes a hold whose command was interrupted half-way.
        _hold_on_store(repo, snapshot_id)
        raise UsageError(f"snapshot {snapshot_id[:12]} is on hold already") from None
    _hold_on_store(repo, snapshot_id)
    return hold


def _needed(repo: Repository, snapshot_id: str) -> set[str] | None:
    """The objects a snapshot cannot do without: its own, its packs and the index objects
    naming them; None when its trees cannot be walked (damage: said in a warning)."""
    from medvault.repository import objectlock

    try:
        snapshot = repo.load_snapshot(snapshot_id)
        return {f"snapshots/{snapshot_id}"} | objectlock.needed_objects(repo, snapshot.tree)
    except (IntegrityError, SnapshotNotFound) as exc:
        repo.warnings.append(
            f"the objects of snapshot {snapshot_id[:12]} cannot all be found ({exc}): "
            "run `medvault check`"
        )
        return None


def _hold_on_store(repo: Repository, snapshot_id: str) -> None:
    """Where the store has Object Lock, a legal hold on every object the snapshot needs and
    on the hold record: the store itself then refuses to delete them, whoever asks."""
    if not repo.lock_enabled:
        return
    from medvault.repository.objectlock import set_legal_holds

    needed = _needed(repo, snapshot_id) or {f"snapshots/{snapshot_id}"}
    set_legal_holds(repo, needed | {f"{FOLDER}/{snapshot_id}"}, on=True)


def _release_on_store(repo: Repository, snapshot_id: str, others: list[str]) -> None:
    """Lift the legal hold from the objects of a released snapshot that no other held
    snapshot needs (packs are shared between snapshots), and from its hold record."""
    if not repo.lock_enabled:
        return
    from medvault.repository.objectlock import set_legal_holds

    mine = _needed(repo, snapshot_id) or {f"snapshots/{snapshot_id}"}
    still: set[str] = set()
    for other in others:
        needed = _needed(repo, other)
        if needed is None:  # what it needs is unknown: lift nothing it might need
            still |= {name for name in mine if not name.startswith("snapshots/")}
        else:
            still |= needed
    set_legal_holds(repo, (mine - still) | {f"{FOLDER}/{snapshot_id}"}, on=False)


def list_holds(repo: Repository) -> list[Hold]:
    """The holds in force. A record that does not open under its own name either is a copy
    of another hold record (replayed: it holds nothing, and is reported) or is damaged (its
    snapshot stays held, safer than the reverse, and is reported)."""
    holds = []
    names = repo.list_records(FOLDER)
    for name in names:
        parts = name.split("/")
        if len(parts) != 2:
            continue  # release records
        try:
            data = repo.load_record_bytes(name)
        except ObjectNotFound:
            continue  # released while listing
        try:
            holds.append(decode_hold(repo.open_record(name, data, KIND_HOLD)))
            continue
        except IntegrityError as exc:
            problem = str(exc)
        origin = _replayed_from(repo, name, data, names)
        if origin is not None:
            repo.warnings.append(
                f"hold record {name} is a copy of {origin} and holds nothing; remove it "
                "(someone with write access to the store put it there)"
            )
            continue
        repo.warnings.append(f"hold on {parts[1][:12]} is unreadable ({problem}); kept")
        holds.append(Hold(parts[1], "(unreadable hold record)", "?", "?", "?"))
    return sorted(holds, key=lambda h: h.time)


def _replayed_from(repo: Repository, name: str, data: bytes, names: list[str]) -> str | None:
    """The name of the hold record `data` authentically is, when it is not `name`'s: tried
    against every hold and release record there is and the hold name of every snapshot
    (one AES-GCM open of a few hundred bytes each, and only for a record that failed)."""
    candidates = dict.fromkeys(
        [*names, *(f"{FOLDER}/{snapshot_id}" for snapshot_id in repo.snapshot_ids())]
    )
    for candidate in candidates:
        if candidate == name:
            continue
        try:
            repo.open_record(candidate, data, KIND_HOLD)
        except IntegrityError:
            continue
        return candidate
    return None


def held_snapshots(repo: Repository) -> dict[str, Hold]:
    return {hold.snapshot: hold for hold in list_holds(repo)}


def remove_hold(
    repo: Repository, snapshot_id: str, reason: str, by: tuple[str, str] | None = None
) -> Hold:
    """Release a hold; `by` as for add_hold."""
    reason = _need_reason(reason)
    with _hold_change(repo, "hold remove"):
        return _remove_hold(repo, snapshot_id, reason, by or _who())


def _remove_hold(repo: Repository, snapshot_id: str, reason: str, by: tuple[str, str]) -> Hold:
    holds = held_snapshots(repo)
    if snapshot_id not in holds:
        raise UsageError(f"snapshot {snapshot_id[:12]} is not on hold")
    user, host = by
    released = Hold(
        **{
            **asdict(holds[snapshot_id]),
            "released": now_iso(),
            "release_reason": reason,
            "released_by": f"{user}@{host}",
        }
    )
    # The record of the release first: a hold never ends without a trace.
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    record = f"{FOLDER}/released/{snapshot_id}.{stamp}"
    repo.store_record(record, _encode(released), KIND_HOLD)
    _release_on_store(repo, snapshot_id, [other for other in holds if other != snapshot_id])
    if repo.lock_enabled:
        # A hold placed meanwhile may need objects just released: it gets them back.
        for other in held_snapshots(repo):
            if other not in holds:
                _hold_on_store(repo, other)
    repo.delete_hold(snapshot_id)
    return released


def _encode(hold: Hold) -> bytes:
    return json.dumps(asdict(hold), sort_keys=True).encode()


_OPTIONAL = ("released", "release_reason", "released_by")


def decode_hold(plaintext: bytes) -> Hold:
    """A hold record's JSON, every field checked: text, and null only where Hold allows it."""
    doc = json_object(plaintext, "hold record")
    names = {f.name for f in fields(Hold)}
    if not names - set(_OPTIONAL) <= set(doc) <= names:
        raise IntegrityError("hold record is malformed")
    for key, value in doc.items():
        if not isinstance(value, str) and not (value is None and key in _OPTIONAL):
            raise IntegrityError(f"hold record has a malformed {key!r}")
    return Hold(**doc)
