"""Snapshot set authentication: the snapshots present, held against the audit trail.

Every backup, copy and repair seals a run record naming the snapshots it made; every forget
one naming those it removed (prune removes no snapshot, only data no snapshot needs). Each
snapshot names the head of its host's audit chain as it was just before it was saved. So,
with the chains verified:

- a snapshot named by a creating record but absent, with no forget naming it, was deleted
  behind medvault's back;
- a snapshot a forget removed that is present again (and no copy or repair made it since)
  was put back;
- a chain that ends below a head some snapshot names was truncated;
- a snapshot whose own chain went on to record later runs of its user, with no record of the
  backup that made it, lost that record.

What cannot be judged: snapshots written before the audit trail (they name no head) and runs
whose record still waits in a host's outbox (a record sealed late). Records copied from
another repository (their chain belongs to that repository's hosts) anchor nothing here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from medvault.repository.audit import AuditEntry, AuditLog, Head, chain_id

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository

# Operations whose record names the snapshots they put in the repository.
CREATING = ("backup", "copy", "repair")
# Operations whose record names the snapshots they removed.
REMOVING = ("forget",)
RUN_KINDS = ("run", "run-ended-elsewhere")


class SetReport(NamedTuple):
    errors: list[str]
    notes: list[str]
    records: int  # audit records that verified


def snapshot_anchors(
    repo: Repository, snapshots: Iterable[Snapshot], chains_present: Iterable[str]
) -> dict[str, Head]:
    """The highest head each chain is named at by a snapshot: for chains of this repository
    (the snapshot's host writes it here) or present here (copied along with their records)."""
    present = set(chains_present)
    anchors: dict[str, Head] = {}
    for snap in snapshots:
        head = snap.audit_head
        if head is None or head.seq < 0:
            continue
        if head.chain not in present and head.chain != chain_id(repo.config.repo_id, snap.host):
            continue  # a copy's anchor into its source repository's chains, not copied here
        known = anchors.get(head.chain)
        if known is None or head.seq > known.seq:
            anchors[head.chain] = Head(head.seq, head.mac)
    return anchors


def authenticate(
    repo: Repository,
    snapshots: Mapping[str, Snapshot | None],
    extra_anchors: Mapping[str, Head] | None = None,
) -> SetReport:
    """Errors and notes about the snapshot set and the audit chains. `snapshots`: the ids
    listed at the start (None: present but unreadable); `extra_anchors`: heads known from
    outside (the ones this host wrote)."""
    log = AuditLog(repo)
    readable = [s for s in snapshots.values() if s is not None]
    anchors = snapshot_anchors(repo, readable, log.chains())
    for chain, head in (extra_anchors or {}).items():
        known = anchors.get(chain)
        if known is None or head.seq > known.seq or (head.seq == known.seq and not known.mac):
            anchors[chain] = head
    entries: list[AuditEntry] = []
    report = log.verify(expected_heads=anchors, collect=entries)
    errors = list(report.problems)
    notes: list[str] = []
    # Listed again after the records were read: a backup running alongside stores its
    # snapshot before its record, so every snapshot a record read here names is listed now.
    present_now = set(repo.snapshot_ids())
    repo_id = repo.config.repo_id
    own = [
        e
        for e in entries
        if e.kind in RUN_KINDS and e.chain == chain_id(repo_id, str(e.record.get("host") or ""))
    ]
    own_chains = {e.chain for e in own}
    created: dict[str, list[AuditEntry]] = {}
    removed: dict[str, list[AuditEntry]] = {}
    for entry in own:
        operation = entry.record.get("operation")
        named = entry.record.get("snapshots")
        if not isinstance(named, list):
            continue
        into = created if operation in CREATING else removed if operation in REMOVING else None
        if into is not None:
            for snapshot_id in named:
                into.setdefault(str(snapshot_id), []).append(entry)
    for snapshot_id in sorted(set(created) | set(removed)):
        made, gone = created.get(snapshot_id, []), removed.get(snapshot_id, [])
        short = snapshot_id[:12]
        if gone and snapshot_id in snapshots:
            forget = max(gone, key=_ended)
            if not made or _ended(forget) > _ended(max(made, key=_ended)):
                errors.append(
                    f"snapshot {short} was removed by the forget recorded in {forget.name} "
                    "but is in the repository again: a forgotten snapshot was put back"
                )
        elif made and not gone and snapshot_id not in present_now:
            errors.append(
                f"snapshot {short} (made by the run recorded in {made[0].name}) is missing "
                "and no forget removed it: it was deleted outside medvault (unless the "
                "forget's record still waits in its host's outbox, or the forget was killed)"
            )
    damaged = {c.chain for c in report.chains if any(c.chain in p for p in report.problems)}
    by_chain: dict[str, list[AuditEntry]] = {}
    for entry in own:
        by_chain.setdefault(entry.chain, []).append(entry)
    for snapshot_id, snap in sorted(snapshots.items()):
        named = snap.audit_head if snap is not None else None
        if snap is None or named is None or snapshot_id in created:
            continue
        if named.chain not in own_chains and named.chain != chain_id(repo_id, snap.host):
            continue  # copied from another repository: its record is in that one's chain
        entries = by_chain.get(named.chain, [])
        problem = _missing_record(snap, named.seq, entries)
        interrupted = _interrupted_maker(snap, named.seq, entries)
        if interrupted is not None:
            notes.append(
                f"snapshot {snap.short_id} was saved by a run that was killed before its "
                f"record was sealed; {interrupted.name} records that run as interrupted"
            )
        elif named.chain in damaged:
            errors.append(
                f"snapshot {snap.short_id}: the record of the backup that made it is missing "
                f"from audit chain {named.chain}, which is damaged (see above)"
            )
        elif problem is not None:
            errors.append(
                f"snapshot {snap.short_id}: the record of the backup that made it is missing "
                f"from audit chain {named.chain} ({problem}): the record was deleted"
            )
        else:
            notes.append(
                f"snapshot {snap.short_id}: the record of the backup that made it has not "
                "reached the audit trail yet (a backup still running, or a record waiting "
                "in its host's outbox)"
            )
    return SetReport(errors, notes, report.records)


def _missing_record(snap: Snapshot, head_seq: int, chain: list[AuditEntry]) -> str | None:
    """Why the snapshot's record should be in its chain by now, or None: a later run of the
    same user on the same host (the same state directory, whose outbox it seals first)
    reached the repository and was recorded after the snapshot's head."""
    ended = _moment(snap.end_time)
    for entry in chain:
        if entry.seq <= head_seq or entry.kind != "run":
            continue
        if entry.record.get("user") != snap.user:
            continue
        started = _moment(entry.record.get("started"))
        if ended is not None and started is not None and started > ended:
            return f"{entry.name}, a later run of {snap.user} on {snap.host}, is there"
    return None


def _interrupted_maker(snap: Snapshot, head_seq: int, chain: list[AuditEntry]) -> AuditEntry | None:
    """The record of a run killed after it saved `snap` but before its own record: sealed
    later, by whoever found its stale lock, with status failed and an "interrupted" error; it
    ran on the snapshot's host, as its user, and started before the snapshot ended."""
    ended = _moment(snap.end_time)
    for entry in chain:
        record = entry.record
        if entry.seq <= head_seq or entry.kind != "run" or record.get("status") != "failed":
            continue
        if not str(record.get("error") or "").startswith("interrupted:"):
            continue
        if (record.get("host"), record.get("user")) != (snap.host, snap.user):
            continue
        started = _moment(record.get("started"))
        if ended is not None and started is not None and started <= ended:
            return entry
    return None


def _moment(text: object) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def _ended(entry: AuditEntry) -> str:
    return str(entry.record.get("ended") or entry.record.get("timestamp") or "")
