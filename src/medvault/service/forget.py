"""forget: remove snapshots, those named or those the retention policies no longer keep.

Their data stays until a prune collects what no snapshot needs. A snapshot on legal hold is
never removed; one the store keeps immutable (Object Lock retention, an append-only
repository) is kept, and the reason said. When a snapshot named by id was kept, the run is
incomplete and the result says why: the shell decides what that means for its caller (the
CLI exits 21)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault import faults
from medvault.errors import ObjectLocked, UsageError
from medvault.service.selectors import find_snapshot

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.service.session import Session

# What became of one snapshot.
KEEP = "keep"  # the policy keeps it
REMOVED = "removed"
WOULD_REMOVE = "would remove"  # a dry run
KEPT = "kept"  # asked to go, but held or locked: `reason` says which


@dataclass(frozen=True)
class ForgetOptions:
    snapshots: tuple[str, ...] = ()  # ids, prefixes or latest[:SOURCE]; none: the policies
    source: str | None = None  # only this source's snapshots
    dry_run: bool = False


@dataclass(frozen=True)
class ForgetOutcome:
    id: str
    source: str
    time: str
    rules: tuple[str, ...]  # why it was chosen or kept: "named", "last", "daily", ...
    action: str = KEEP
    reason: str | None = None


@dataclass(frozen=True)
class ForgetResult:
    outcomes: tuple[ForgetOutcome, ...]
    # Set when snapshots named by id were kept (held or locked): not all that was asked.
    incomplete: str | None = None

    @property
    def kept(self) -> tuple[ForgetOutcome, ...]:
        return tuple(o for o in self.outcomes if o.action == KEPT)


# What to do with one snapshot: (snapshot, remove it?, the rules that decided).
Planned = tuple["Snapshot", bool, tuple[str, ...]]


def forget(session: Session, options: ForgetOptions) -> ForgetResult:
    from medvault.policy.holds import held_snapshots

    with session.run("forget", source=options.source) as run:
        repo = session.open(options.source)
        run.repository = repo.url
        if options.snapshots:
            chosen = {}
            for selector in options.snapshots:
                snap = find_snapshot(repo, selector, run, allow_random=False)
                chosen[snap.id] = snap
            plan: list[Planned] = [(snap, True, ("named",)) for snap in chosen.values()]
        else:
            plan = _plan_by_policy(session, repo.list_snapshots(), options.source)
        outcomes: list[ForgetOutcome] = []
        with repo.lock(exclusive=True, purpose="forget"):
            holds = held_snapshots(repo)
            faults.point("forget.after-hold-check")
            for snap, remove, rules in plan:
                action, reason = KEEP, None
                if not remove:
                    pass
                elif snap.id in holds:
                    action, reason = KEPT, f"legal hold: {holds[snap.id].reason}"
                elif options.dry_run:
                    reason = repo.undeletable_reason(snap.id)
                    action = KEPT if reason else WOULD_REMOVE
                else:
                    try:
                        repo.delete_snapshot(snap.id)
                        action = REMOVED
                        run.touched(snap.id)
                        faults.point("forget.after-delete")
                    except ObjectLocked as exc:
                        action, reason = KEPT, str(exc)
                outcomes.append(
                    ForgetOutcome(snap.id, snap.source, snap.time, rules, action, reason)
                )
        result = ForgetResult(tuple(outcomes))
        actions = [o.action for o in outcomes]
        run.details.update(
            dry_run=options.dry_run,
            by_policy=not options.snapshots,
            removed=actions.count(REMOVED),
            would_remove=actions.count(WOULD_REMOVE),
            # Every snapshot that stays: the policy keeps it, or it is held or locked.
            kept=actions.count(KEEP) + actions.count(KEPT),
            held_or_locked=actions.count(KEPT),
        )
        if result.kept and options.snapshots:
            why = f"{len(result.kept)} snapshot(s) kept: on legal hold or locked"
            run.incomplete(why)
            result = ForgetResult(result.outcomes, incomplete=why)
        return result


def _plan_by_policy(session: Session, snaps: list[Snapshot], source: str | None) -> list[Planned]:
    """(snapshot, remove?, rules) for every snapshot of every source with a policy."""
    from medvault.policy.retention import apply

    if not session.configured_sources():
        raise UsageError(
            "no retention policies: give snapshot ids, or define [tier.NAME.retention] or "
            "[source.NAME.retention] in medvault.toml"
        )
    plan: list[Planned] = []
    by_id = {s.id: s for s in snaps}
    for name in sorted({s.source for s in snaps}):
        if source is not None and name != source:
            continue
        own = [s for s in snaps if s.source == name]
        policy = session.settings.retention_policy(name)
        if policy is None or policy.empty:
            plan += [(s, False, ("no policy",)) for s in own]
            continue
        for decision in apply(policy, [(s.id, s.taken) for s in own]):
            plan.append((by_id[decision.snapshot_id], not decision.keep, tuple(decision.reasons)))
    return plan
