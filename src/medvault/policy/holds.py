"""Legal holds: a held snapshot is never forgotten, whatever its retention says.

A hold is an object `holds/<snapshot id>` in the repository, sealed and bound to that name:
the reason, who placed it and when. Removing one also needs a reason, and leaves a sealed record
`holds/released/<snapshot id>.<time>` behind, so the history of a hold survives its end.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from medvault.errors import (
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    UsageError,
)
from medvault.repository.keys import now_iso
from medvault.repository.records import HOLDS, KIND_HOLD

if TYPE_CHECKING:
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


def add_hold(repo: Repository, snapshot_id: str, reason: str) -> Hold:
    user, host = _who()
    hold = Hold(snapshot_id, _need_reason(reason), user, host, now_iso())
    try:
        repo.store_record(f"{FOLDER}/{snapshot_id}", _encode(hold), KIND_HOLD)
    except ObjectExists:
        raise UsageError(f"snapshot {snapshot_id[:12]} is on hold already") from None
    return hold


def list_holds(repo: Repository) -> list[Hold]:
    """The holds in force. A record that does not open under its own name either is a copy
    of another hold record (replayed: it holds nothing, and is reported) or is damaged (its
    snapshot stays held, safer than the reverse, and is reported)."""
    holds = []
    names = [obj.name for obj in repo.backend.list(FOLDER)]
    for name in names:
        parts = name.split("/")
        if len(parts) != 2:
            continue  # release records
        try:
            data = repo.backend.load(name)
        except ObjectNotFound:
            continue  # released while listing
        try:
            holds.append(_decode(repo.open_record(name, data, KIND_HOLD)))
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
    repo.store_record(record, _encode(released), KIND_HOLD)
    repo.backend.delete(f"{FOLDER}/{snapshot_id}")
    return released


def _encode(hold: Hold) -> bytes:
    return json.dumps(asdict(hold), sort_keys=True).encode()


def _decode(payload: bytes) -> Hold:
    try:
        return Hold(**json.loads(payload))
    except (ValueError, TypeError) as exc:
        raise IntegrityError("hold record is malformed") from exc
