"""Repairing a repository from its copy at a second site (`medvault repair --from NAME`).

1. Packs: every pack the primary's index names is looked for (and with read_data, read and
   hashed); a missing or damaged one is replaced by the secondary's copy of the same name,
   which must hash to that name. Possible only with shared key material (the same packs).
2. Snapshot objects that are unreadable in the primary are replaced the same way.
3. WAL: a damaged file is pushed again from the secondary's copy (the archive replaces a copy
   that fails authentication); a missing one is copied.
4. Whatever else the primary lacks (snapshots, and the data of blobs its damaged indexes no
   longer name) comes over through `RepositoryCopier`, secondary to primary.

Nothing the primary holds intact is rewritten. Objects the primary keeps immutable (Object
Lock, append-only) cannot be replaced; they are reported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medvault import faults
from medvault.errors import IntegrityError, MedvaultError, ObjectExists, ObjectNotFound
from medvault.repository import deletion
from medvault.repository.copy import RepositoryCopier, shares_keys
from medvault.repository.crypto import storage_id
from medvault.repository.repo import pack_name

if TYPE_CHECKING:
    import datetime as dt

    from medvault.repository.repo import Repository


@dataclass
class RepairResult:
    packs_checked: int = 0
    packs_replaced: list[str] = field(default_factory=list)
    snapshots_replaced: list[str] = field(default_factory=list)
    wal_replaced: list[str] = field(default_factory=list)
    snapshots_copied: int = 0
    wal_copied: int = 0
    unrepaired: list[str] = field(default_factory=list)  # "what: why"

    @property
    def ok(self) -> bool:
        return not self.unrepaired


def repair_from(
    primary: Repository,
    secondary: Repository,
    *,
    read_data: bool = True,
    retention_for: Callable[[str], dt.timedelta | None] | None = None,
) -> RepairResult:
    result = RepairResult()
    raw = shares_keys(secondary, primary)
    if raw:
        _repair_packs(primary, secondary, read_data, result)
        _repair_snapshot_objects(primary, secondary, result)
    _repair_wal(primary, secondary, result)
    # What the primary still lacks: snapshots gone from it, and data its damaged indexes no
    # longer name (the secondary's copies are indexed afresh).
    primary.load_index()
    faults.point("repair.before-copy")
    copier = RepositoryCopier(secondary, primary, retention_for=retention_for)
    copier.copy_snapshots(secondary.list_snapshots())
    copier.copy_wal()
    result.snapshots_copied = len(copier.result.copied)
    result.wal_copied = copier.result.wal_copied
    if not raw and result.packs_replaced == []:
        result.unrepaired.extend(_damaged_packs_without_shared_keys(primary, read_data))
    return result


def _indexed_packs(repo: Repository) -> list[str]:
    repo.index  # noqa: B018 - loads the index, which fills pack_indexes
    return sorted(repo.pack_indexes)


def _pack_is_sound(repo: Repository, pack_id: str, size: int | None, read_data: bool) -> bool:
    if size is None:
        return False
    if not read_data:
        return True
    try:
        return storage_id(repo.backend.load(pack_name(pack_id))) == pack_id
    except ObjectNotFound:
        return False


def _repair_packs(
    primary: Repository, secondary: Repository, read_data: bool, result: RepairResult
) -> None:
    sizes = {obj.name: obj.size for obj in primary.backend.list("data")}

    def repair_one(pack_id: str) -> str | None:
        name = pack_name(pack_id)
        if _pack_is_sound(primary, pack_id, sizes.get(name), read_data):
            return None
        try:
            data = secondary.backend.load(name)
        except ObjectNotFound:
            return f"unrepaired:pack {pack_id[:16]}: missing or damaged here and absent there"
        if storage_id(data) != pack_id:
            return f"unrepaired:pack {pack_id[:16]}: the secondary's copy is damaged too"
        try:
            with contextlib.suppress(ObjectExists):  # written meanwhile by another repair
                if name in sizes:
                    deletion.replace_damaged(primary, name, data)
                else:
                    primary.store_object(name, data)
        except MedvaultError as exc:
            return f"unrepaired:pack {pack_id[:16]}: {exc}"
        faults.point("repair.after-pack")
        return f"replaced:{pack_id}"

    packs = _indexed_packs(primary)
    result.packs_checked = len(packs)
    workers = max(primary.backend.concurrency, secondary.backend.concurrency)
    with ThreadPoolExecutor(workers, "medvault-repair") as pool:
        for outcome in pool.map(repair_one, packs):
            if outcome is None:
                continue
            kind, _, detail = outcome.partition(":")
            if kind == "replaced":
                result.packs_replaced.append(detail)
            else:
                result.unrepaired.append(detail)


def _repair_snapshot_objects(
    primary: Repository, secondary: Repository, result: RepairResult
) -> None:
    for snapshot_id in primary.snapshot_ids():
        try:
            primary.load_snapshot(snapshot_id)
            continue
        except (IntegrityError, MedvaultError):
            pass
        name = f"snapshots/{snapshot_id}"
        try:
            data = secondary.backend.load(name)
        except ObjectNotFound:
            result.unrepaired.append(f"snapshot {snapshot_id[:12]}: damaged, not in the secondary")
            continue
        if storage_id(data) != snapshot_id:
            result.unrepaired.append(f"snapshot {snapshot_id[:12]}: damaged in both")
            continue
        try:
            deletion.replace_damaged(primary, name, data)
            result.snapshots_replaced.append(snapshot_id)
        except MedvaultError as exc:
            result.unrepaired.append(f"snapshot {snapshot_id[:12]}: {exc}")


def _repair_wal(primary: Repository, secondary: Repository, result: RepairResult) -> None:
    from medvault.repository.wal import WalArchive

    for obj in primary.backend.list("wal"):
        parts = obj.name.split("/")
        if len(parts) != 4:
            continue
        source, name = parts[1], parts[3]
        here = WalArchive(primary, source)
        try:
            here._fetch_here(name)
            continue
        except IntegrityError as exc:
            damage = str(exc)
        good = None
        with contextlib.suppress(MedvaultError):
            good = WalArchive(secondary, source)._fetch_here(name)
        if good is None:
            result.unrepaired.append(f"WAL {name} of {source}: {damage}; no good copy there")
            continue
        try:
            here.push(name, good)  # replaces a copy that fails authentication
            result.wal_replaced.append(name)
        except MedvaultError as exc:
            result.unrepaired.append(f"WAL {name} of {source}: {exc}")


def _damaged_packs_without_shared_keys(primary: Repository, read_data: bool) -> list[str]:
    sizes = {obj.name: obj.size for obj in primary.backend.list("data")}
    return [
        f"pack {pack_id[:16]}: damaged, and the secondary has its own keys (restore from it)"
        for pack_id in _indexed_packs(primary)
        if not _pack_is_sound(primary, pack_id, sizes.get(pack_name(pack_id)), read_data)
    ]
