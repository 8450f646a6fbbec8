"""Legal holds: place, release and list them (policy/holds.py keeps the records).

A held snapshot is never forgotten. Placing and releasing a hold each need a reason, which
the run's details keep beside the repository's own sealed record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault.service.selectors import find_snapshot

if TYPE_CHECKING:
    from medvault.policy.holds import Hold
    from medvault.repository.records import Snapshot
    from medvault.service.session import Session


@dataclass(frozen=True)
class HoldChange:
    snapshot: Snapshot
    hold: Hold  # the hold placed, or the record of its release


@dataclass(frozen=True)
class HoldList:
    holds: tuple[Hold, ...]  # in force, oldest first


def hold_add(session: Session, *, snapshot: str, reason: str) -> HoldChange:
    """Put a snapshot (id, prefix or latest[:SOURCE]) on legal hold."""
    from medvault.policy.holds import add_hold

    with session.run("hold-add") as run:
        repo = session.open()
        run.repository = repo.url
        snap = find_snapshot(repo, snapshot, run)
        run.source = snap.source
        run.touched(snap.id)
        run.details["reason"] = reason
        hold = add_hold(repo, snap.id, reason, by=_who(session))
        run.details["reason"] = hold.reason
        return HoldChange(snap, hold)


def hold_remove(session: Session, *, snapshot: str, reason: str) -> HoldChange:
    """Release a legal hold; the release is recorded with its reason."""
    from medvault.policy.holds import remove_hold

    with session.run("hold-remove") as run:
        repo = session.open()
        run.repository = repo.url
        snap = find_snapshot(repo, snapshot, run)
        run.source = snap.source
        run.touched(snap.id)
        run.details["reason"] = reason
        released = remove_hold(repo, snap.id, reason, by=_who(session))
        run.details.update(reason=released.release_reason, held_for=released.reason)
        return HoldChange(snap, released)


def hold_list(session: Session) -> HoldList:
    from medvault.policy.holds import list_holds

    with session.run("hold-list") as run:
        repo = session.open()
        run.repository = repo.url
        holds = tuple(list_holds(repo))
        run.details["holds"] = len(holds)
        return HoldList(holds)


def _who(session: Session) -> tuple[str, str]:
    """A hold names who placed or lifted it: the shell's caller (an API user, not the
    service's OS account)."""
    return session.caller.user, session.caller.host
