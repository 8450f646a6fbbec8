"""Legal holds: a held snapshot is never forgotten, whatever its retention says.

A hold is an object `holds/<snapshot id>` in the repository, sealed like every other: the
reason, who placed it and when. Removing one also needs a reason, and leaves a sealed record
`holds/released/<snapshot id>.<time>` behind, so the history of a hold survives its end.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from medvault.errors import IntegrityError, ObjectExists, ObjectNotFound, UsageError
from medvault.repository.keys import now_iso

if TYPE_CHECKING:
    from medvault.repository.repo import Repository

KIND_HOLD = b"hold"
FOLDER = "holds"


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


def add_hold(repo: Repository, snapshot_id: str, reason: str) -> Hold:
    user, host = _who()
    hold = Hold(snapshot_id, _need_reason(reason), user, host, now_iso())
    try:
        repo.store_object(f"{FOLDER}/{snapshot_id}", _seal(repo, hold))
    except ObjectExists:
        raise UsageError(f"snapshot {snapshot_id[:12]} is on hold already") from None
    return hold


def list_holds(repo: Repository) -> list[Hold]:
    holds = []
    for obj in repo.backend.list(FOLDER):
        parts = obj.name.split("/")
        if len(parts) != 2:
            continue  # release records
        try:
            holds.append(_open(repo, repo.backend.load(obj.name)))
        except (IntegrityError, ObjectNotFound) as exc:
            # Unreadable, but there: the snapshot stays held (safer than the reverse).
            repo.warnings.append(f"hold on {parts[1][:12]} is unreadable ({exc}); kept")
            holds.append(Hold(parts[1], "(unreadable hold record)", "?", "?", "?"))
    return sorted(holds, key=lambda h: h.time)


def held_snapshots(repo: Repository) -> dict[str, Hold]:
    return {hold.snapshot: hold for hold in list_holds(repo)}


def remove_hold(repo: Repository, snapshot_id: str, reason: str) -> Hold:
    reason = _need_reason(reason)
    holds = held_snapshots(repo)
    if snapshot_id not in holds:
        raise UsageError(f"snapshot {snapshot_id[:12]} is not on hold")
    user, host = _who()
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
    repo.store_object(record, _seal(repo, released))
    repo.backend.delete(f"{FOLDER}/{snapshot_id}")
    return released


def _seal(repo: Repository, hold: Hold) -> bytes:
    return repo.seal(json.dumps(asdict(hold), sort_keys=True).encode(), KIND_HOLD)


def _open(repo: Repository, data: bytes) -> Hold:
    return decode_hold(repo.unseal(data, KIND_HOLD))


_OPTIONAL = ("released", "release_reason", "released_by")


def decode_hold(plaintext: bytes) -> Hold:
    """A hold record's JSON, every field checked: text, and null only where Hold allows it."""
    try:
        doc = json.loads(plaintext)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError("hold record is malformed") from exc
    names = {f.name for f in fields(Hold)}
    if not isinstance(doc, dict) or not names - set(_OPTIONAL) <= set(doc) <= names:
        raise IntegrityError("hold record is malformed")
    for key, value in doc.items():
        if not isinstance(value, str) and not (value is None and key in _OPTIONAL):
            raise IntegrityError(f"hold record has a malformed {key!r}")
    return Hold(**doc)
