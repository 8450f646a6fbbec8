"""Repository verification.

Structure (always): every index opens, every indexed pack exists and is long enough, every
snapshot opens and every tree and blob it names is indexed and readable. With read_data:
every pack (or a random subset) still hashes to its id, and every blob in it authenticates,
decompresses and hashes to its blob id. Damage is traced to the snapshots and files it hurts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from medvault.errors import IntegrityError, MedvaultError, ObjectNotFound
from medvault.repository import compression
from medvault.repository.audit import Head
from medvault.repository.crypto import KEY_BLOCK_LEN, storage_id
from medvault.repository.index import PackRecord
from medvault.repository.packs import TRAILER, open_blob, read_pack_header
from medvault.repository.records import (
    DRILLS,
    HOLDS,
    KIND_DRILL,
    KIND_HOLD,
    Node,
    Snapshot,
    display_path,
)
from medvault.repository.repo import Repository, pack_name


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    affected: dict[str, list[str]] = field(default_factory=dict)  # snapshot id -> paths
    snapshots: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    wal_files: int = 0
    wal_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


class Checker:
    def __init__(
        self,
        repo: Repository,
        *,
        read_data: bool = False,
        subset: float | None = None,
        workers: int = 2,
        on_progress: Callable[[int], None] | None = None,
        audit_anchors: Mapping[str, Head] | None = None,
    ) -> None:
        self.repo = repo
        self.audit_anchors = audit_anchors
        self.read_data = read_data or subset is not None
        self.subset = subset
        self.workers = max(workers, repo.backend.concurrency)
        self.on_progress = on_progress
        self.report = CheckReport()
        self.bad_blobs: dict[bytes, str] = {}
        self.snapshots: dict[str, Snapshot | None] = {}  # listed: None when unreadable
        self.only: set[bytes] | None = None  # checking one snapshot: the blobs it needs

    def run(self) -> CheckReport:
        # Snapshots first: any snapshot listed now was written after its index, so the index
        # loaded next covers it even while a backup runs alongside.
        snapshot_ids = self.repo.snapshot_ids()
        for index_id, reason in self.repo.load_index(strict=False):
            self.report.errors.append(f"index {index_id[:12]} is unreadable: {reason}")
        packs = list(self.repo.index.packs())
        self.report.packs = len(packs)
        present = {obj.name.rsplit("/", 1)[1]: obj.size for obj in self.repo.backend.list("data")}
        indexed = {p.pack_id for p in packs}
        for pack in packs:
            self._check_pack_present(pack, present)
        stray = set(present) - indexed
        if stray:
            self.report.notes.append(
                f"{len(stray)} pack(s) are not referenced by any index (left by an interrupted "
                "backup); `medvault prune` will remove them"
            )
        if self.read_data:
            self._read_packs([p for p in packs if p.pack_id in present])
        self._check_snapshots(snapshot_ids)
        self._check_wal()
        self._check_records()
        self._check_snapshot_set()
        return self.report

    def run_one(self, snapshot: Snapshot) -> CheckReport:
        """One snapshot: its trees and the blobs they name, the packs holding them, and with
        read_data those blobs' bytes. Damage elsewhere in the repository (another
        snapshot's blobs, even in a pack shared with this one) is not this check's finding."""
        for index_id, reason in self.repo.load_index(strict=False):
            self.report.notes.append(f"index {index_id[:12]} is unreadable: {reason}")
        self.only = self._reachable(snapshot.tree)
        packs = [
            p for p in self.repo.index.packs() if any(e.blob_id in self.only for e in p.entries)
        ]
        self.report.packs = len(packs)
        present = {obj.name.rsplit("/", 1)[1]: obj.size for obj in self.repo.backend.list("data")}
        for pack in packs:
            self._check_pack_present(pack, present)
        if self.read_data:
            self._read_packs([p for p in packs if p.pack_id in present])
        self._check_snapshots([snapshot.id])
        return self.report

    def _reachable(self, tree_id: bytes) -> set[bytes]:
        """Every blob the snapshot's readable trees name (an unreadable tree is reported by
        _check_tree)."""
        blobs, stack = {tree_id}, [tree_id]
        while stack:
            try:
                nodes = self.repo.load_tree(stack.pop())
            except MedvaultError:
                continue
            for node in nodes:
                blobs.update(node.content)
                if node.subtree is not None and node.subtree not in blobs:
                    blobs.add(node.subtree)
                    stack.append(node.subtree)
        return blobs

    def _check_snapshot_set(self) -> None:
        """The audit chains verified record by record against the heads the snapshots name,
        and the snapshots present held against the records (repository/snapset.py)."""
        from medvault.repository.snapset import authenticate

        found = authenticate(self.repo, self.snapshots, self.audit_anchors)
        self.report.errors.extend(found.errors)
        self.report.notes.extend(found.notes)

    def _check_records(self) -> None:
        """Every hold, drill and prune record opens under its own name (a copy under another
        name does not), and every held snapshot is still there. (Audit records: see
        _check_snapshot_set.)"""
        from medvault.repository.prune import FOLDER as CONDEMNED
        from medvault.repository.prune import KIND_CONDEMNED

        for folder, kind in (
            (HOLDS, KIND_HOLD),
            (DRILLS, KIND_DRILL),
            (CONDEMNED, KIND_CONDEMNED),
        ):
            for obj in self.repo.backend.list(folder):
                try:
                    self.repo.load_record(obj.name, kind)
                except ObjectNotFound:
                    continue
                except IntegrityError as exc:
                    self.report.errors.append(str(exc))
        snapshots = set(self.repo.snapshot_ids())
        for obj in self.repo.backend.list(HOLDS):
            parts = obj.name.split("/")
            if len(parts) == 2 and parts[1] not in snapshots:
                self.report.errors.append(
                    f"snapshot {parts[1][:12]} is on legal hold but is missing from the "
                    "repository: it was deleted outside medvault; restore it from a copy"
                )

    def _check_wal(self) -> None:
        """Every archived WAL file is counted; with --read-data each is opened, which proves
        it authentic and bound to its name (a subset samples the same fraction)."""
        import random

        from medvault.repository.wal import WalArchive

        sources = sorted({o.name.split("/")[1] for o in self.repo.backend.list("wal")})
        for source in sources:
            archive = WalArchive(self.repo, source, compress_threads=0)
            names = archive.names()
            self.report.wal_files += len(names)
            if not self.read_data:
                continue
            if self.subset is not None:
                names = [n for n in names if random.random() < self.subset]
            for name in names:
                try:
                    data = archive.fetch(name)
                except IntegrityError as exc:
                    self.report.errors.append(str(exc))
                    continue
                if data is None:
                    self.report.errors.append(f"WAL {source}/{name} vanished during the check")
                    continue
                self.report.wal_read += 1
                self.report.bytes_read += len(data)

    # -- packs -----------------------------------------------------------------------------

    def _mark_pack_bad(self, pack: PackRecord, reason: str) -> None:
        for entry in pack.entries:
            self.bad_blobs.setdefault(entry.blob_id, reason)

    def _check_pack_present(self, pack: PackRecord, present: dict[str, int]) -> None:
        size = present.get(pack.pack_id)
        if size is None:
            self.report.errors.append(f"pack {pack.pack_id[:16]} is missing")
            self._mark_pack_bad(pack, f"pack {pack.pack_id[:16]} is missing")
            return
        end = max((e.offset + e.length for e in pack.entries), default=0)
        if size < end + KEY_BLOCK_LEN + TRAILER.size:
            self.report.errors.append(
                f"pack {pack.pack_id[:16]} is truncated ({size} bytes, index expects > {end})"
            )
            self._mark_pack_bad(pack, f"pack {pack.pack_id[:16]} is truncated")

    def _select(self, packs: list[PackRecord]) -> list[PackRecord]:
        if self.subset is None:
            return packs
        count = max(1, round(len(packs) * self.subset / 100)) if packs else 0
        return random.sample(packs, min(count, len(packs)))

    def _read_packs(self, packs: list[PackRecord]) -> None:
        with ThreadPoolExecutor(self.workers, "medvault-check") as pool:
            for errors, bad, blobs, size in pool.map(self._read_pack, self._select(packs)):
                self.report.errors.extend(errors)
                self.bad_blobs.update(bad)
                self.report.packs_read += 1
                self.report.blobs_read += blobs
                self.report.bytes_read += size
                if self.on_progress is not None:
                    self.on_progress(size)

    def _read_pack(self, pack: PackRecord) -> tuple[list[str], dict[bytes, str], int, int]:
        name = pack.pack_id[:16]
        errors: list[str] = []
        bad: dict[bytes, str] = {}
        try:
            data = self.repo.backend.load(pack_name(pack.pack_id))
        except MedvaultError as exc:
            return [f"pack {name} cannot be read: {exc}"], {}, 0, 0
        entries = pack.entries
        if self.only is not None:
            # One snapshot: only its blobs, each authenticated on its own; the pack's hash and
            # header cover other snapshots' blobs too.
            entries = [e for e in entries if e.blob_id in self.only]
        else:
            if storage_id(data) != pack.pack_id:
                errors.append(f"pack {name} is damaged: its bytes no longer hash to its id")
            try:
                _, header = read_pack_header(self.repo.master.keks, data)
                if not set(pack.entries) <= set(header):
                    errors.append(f"pack {name}: its header and the index disagree")
            except IntegrityError as exc:
                errors.append(f"pack {name}: header unreadable ({exc})")
        try:
            content_key = self.repo.content_key(pack.key_block)
        except IntegrityError as exc:
            reason = f"pack {name}: key block unusable ({exc})"
            return [*errors, reason], {e.blob_id: reason for e in entries}, 0, len(data)
        for entry in entries:
            sealed = data[entry.offset : entry.offset + entry.length]
            try:
                raw = compression.decode(open_blob(content_key, entry, sealed), entry.raw_length)
                if self.repo.blob_id(raw) != entry.blob_id:
                    raise IntegrityError("does not hash to its id")
            except IntegrityError as exc:
                reason = f"blob {entry.blob_id.hex()[:16]} in pack {name}: {exc}"
                errors.append(reason)
                bad[entry.blob_id] = reason
        return errors, bad, len(entries), len(data)

    # -- snapshots -------------------------------------------------------------------------

    def _check_snapshots(self, snapshot_ids: list[str]) -> None:
        clean_trees: set[bytes] = set()
        for snapshot_id in snapshot_ids:
            try:
                snapshot = self.repo.load_snapshot(snapshot_id)
            except MedvaultError as exc:
                self.report.errors.append(f"snapshot {snapshot_id[:12]} is unreadable: {exc}")
                self.snapshots[snapshot_id] = None
                continue
            self.snapshots[snapshot_id] = snapshot
            self.report.snapshots += 1
            damaged: list[str] = []
            self._check_tree(snapshot, snapshot.tree, damaged, clean_trees)
            if damaged:
                self.report.affected[snapshot.id] = damaged

    def _blob_problem(self, blob_id: bytes) -> str | None:
        if blob_id in self.bad_blobs:
            return self.bad_blobs[blob_id]
        if self.repo.index.lookup(blob_id) is None:
            return f"blob {blob_id.hex()[:16]} is not in any index"
        return None

    def _check_tree(
        self,
        snapshot: Snapshot,
        tree_id: bytes,
        damaged: list[str],
        clean_trees: set[bytes],
    ) -> None:
        """Every tree below `tree_id` and every blob its files need, depth-first with an
        explicit stack (a tree may be deeper than the recursion limit). A tree is clean when
        it and everything below it is; clean trees are not walked again."""
        if tree_id in clean_trees:
            return
        nodes = self._open_tree(snapshot, tree_id, b"", damaged)
        if nodes is None:
            return
        levels = [_TreeCheck(tree_id, iter(nodes))]
        names: list[bytes] = []  # the path to the level being checked
        while levels:
            level = levels[-1]
            node = next(level.nodes, None)
            if node is None:
                levels.pop()
                if level.clean:
                    clean_trees.add(level.tree_id)
                elif levels:
                    levels[-1].clean = False
                if levels:
                    names.pop()
                continue
            if node.subtree is not None:
                if node.subtree in clean_trees:
                    continue
                below = self._open_tree(
                    snapshot, node.subtree, b"/".join([*names, node.name]), damaged
                )
                if below is None:
                    level.clean = False
                    continue
                names.append(node.name)
                levels.append(_TreeCheck(node.subtree, iter(below)))
                continue
            for blob_id in node.content:
                problem = self._blob_problem(blob_id)
                if problem is not None:
                    shown = "/" + display_path(b"/".join([*names, node.name]))
                    damaged.append(shown)
                    self.report.errors.append(
                        f"snapshot {snapshot.short_id}: file {shown} is damaged: {problem}"
                    )
                    level.clean = False
                    break

    def _open_tree(
        self, snapshot: Snapshot, tree_id: bytes, path: bytes, damaged: list[str]
    ) -> list[Node] | None:
        """A directory's listing, or None (reported) when it cannot be read."""
        problem = self._blob_problem(tree_id)
        if problem is None:
            try:
                return self.repo.load_tree(tree_id)
            except MedvaultError as exc:
                problem = str(exc)
        shown = "/" + display_path(path)
        damaged.append(f"{shown} (directory listing: {problem})")
        self.report.errors.append(
            f"snapshot {snapshot.short_id}: directory {shown} unreadable: {problem}"
        )
        return None


@dataclass
class _TreeCheck:
    tree_id: bytes
    nodes: Iterator[Node]
    clean: bool = True


def check_repository(
    repo: Repository,
    *,
    read_data: bool = False,
    subset: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    audit_anchors: Mapping[str, Head] | None = None,
) -> CheckReport:
    """`audit_anchors`: heads of audit chains known from outside the repository (the ones
    this host wrote), checked besides those the snapshots name."""
    return Checker(
        repo,
        read_data=read_data,
        subset=subset,
        on_progress=on_progress,
        audit_anchors=audit_anchors,
    ).run()


def check_snapshot(
    repo: Repository,
    snapshot: Snapshot,
    *,
    read_data: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """One snapshot's trees and blobs (with read_data their bytes), nothing else."""
    return Checker(repo, read_data=read_data, on_progress=on_progress).run_one(snapshot)
