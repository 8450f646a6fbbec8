"""`medvault forget` and `medvault hold`.

forget removes snapshots: the ones named, or (with no ids) those the retention policies of
medvault.toml no longer keep, per source. Their data stays until a prune collects what no
snapshot needs. A snapshot on legal hold is never removed; one the store keeps immutable
(Object Lock retention, an append-only repository) is kept, and the reason said."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import typer

from medvault import faults
from medvault.cli.context import obtain, print_json
from medvault.errors import ForgetRefused, ObjectLocked, UsageError

if TYPE_CHECKING:
    from medvault.cli.context import CliContext
    from medvault.repository.records import Snapshot


@dataclass
class Outcome:
    id: str
    source: str
    time: str
    rules: list[str]
    action: str = "keep"  # keep, removed, would remove, kept (held or locked)
    reason: str | None = None


def _plan_by_policy(
    cli: CliContext, snaps: list[Snapshot], source: str | None
) -> list[tuple[Snapshot, bool, list[str]]]:
    """(snapshot, remove?, rules) for every snapshot of every source with a policy."""
    from medvault.policy.retention import apply

    if not cli.configured_sources():
        raise UsageError(
            "no retention policies: give snapshot ids, or define [tier.NAME.retention] or "
            "[source.NAME.retention] in medvault.toml"
        )
    plan = []
    by_id = {s.id: s for s in snaps}
    for name in sorted({s.source for s in snaps}):
        if source is not None and name != source:
            continue
        own = [s for s in snaps if s.source == name]
        policy = cli.settings.retention_policy(name)
        if policy is None or policy.empty:
            plan += [(s, False, ["no policy"]) for s in own]
            continue
        for decision in apply(policy, [(s.id, s.taken) for s in own]):
            plan.append((by_id[decision.snapshot_id], not decision.keep, list(decision.reasons)))
    return plan


def forget(
    ctx: typer.Context,
    snapshot_ids: list[str] = typer.Argument(
        None, metavar="[SNAPSHOT]...", help="Ids or prefixes; none: apply the retention policies."
    ),
    source: str | None = typer.Option(None, "--source", help="Only this source's snapshots."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go; remove nothing."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Forget snapshots: those named, or those the retention policies no longer keep (their
    data goes with the next prune). Held snapshots stay. Exits 21 when a snapshot named by
    id is held or locked and was kept."""
    from medvault.policy.holds import held_snapshots

    cli = obtain(ctx)
    repo = cli.open(source)
    if snapshot_ids:
        chosen = {}
        for selector in snapshot_ids:
            snap = repo.find_snapshot(selector)
            chosen[snap.id] = snap
        plan = [(snap, True, ["named"]) for snap in chosen.values()]
    else:
        plan = _plan_by_policy(cli, repo.list_snapshots(), source)
    results: list[Outcome] = []
    with repo.lock(exclusive=True, purpose="forget"):
        holds = held_snapshots(repo)
        faults.point("forget.after-hold-check")
        for snap, remove, rules in plan:
            entry = Outcome(snap.id, snap.source, snap.time, rules)
            if not remove:
                pass
            elif snap.id in holds:
                entry.action, entry.reason = "kept", f"legal hold: {holds[snap.id].reason}"
            elif dry_run:
                entry.reason = repo.undeletable_reason(snap.id)
                entry.action = "kept" if entry.reason else "would remove"
            else:
                try:
                    repo.delete_snapshot(snap.id)
                    entry.action = "removed"
                    faults.point("forget.after-delete")
                except ObjectLocked as exc:
                    entry.action, entry.reason = "kept", str(exc)
            results.append(entry)
    if as_json:
        print_json([asdict(entry) for entry in results])
    else:
        for entry in results:
            why = entry.reason or ", ".join(entry.rules)
            print(
                f"{entry.action:<12} {entry.id[:12]}  {entry.source:<12} "
                f"{entry.time[:19].replace('T', ' ')}  {why}"
            )
    kept = [e for e in results if e.action == "kept"]
    if kept and snapshot_ids:
        raise ForgetRefused(f"{len(kept)} snapshot(s) kept: on legal hold or locked")


hold_app = typer.Typer(
    help="Legal holds: held snapshots are never forgotten.", no_args_is_help=True
)


@hold_app.command("add")
def hold_add(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="Snapshot id, prefix or latest[:SOURCE]."),
    reason: str = typer.Option(..., "--reason", help="Why (a case number, a request)."),
) -> None:
    """Put a snapshot on legal hold."""
    from medvault.policy.holds import add_hold

    repo = obtain(ctx).open()
    snap = repo.find_snapshot(snapshot)
    hold = add_hold(repo, snap.id, reason)
    print(f"snapshot {snap.short_id} ({snap.source}, {snap.time[:19]}) is on hold: {hold.reason}")


@hold_app.command("list")
def hold_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the snapshots on hold."""
    from medvault.policy.holds import list_holds

    holds = list_holds(obtain(ctx).open())
    if as_json:
        print_json([asdict(h) for h in holds])
        return
    for hold in holds:
        print(f"{hold.snapshot[:12]}  {hold.time[:19]}  {hold.user}@{hold.host}  {hold.reason}")
    print(f"{len(holds)} hold(s)")


@hold_app.command("remove")
def hold_remove(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="Snapshot id or prefix."),
    reason: str = typer.Option(..., "--reason", help="Why the hold ends."),
) -> None:
    """Release a legal hold (the release is recorded with its reason)."""
    from medvault.policy.holds import remove_hold

    repo = obtain(ctx).open()
    snap = repo.find_snapshot(snapshot)
    remove_hold(repo, snap.id, reason)
    print(f"hold on snapshot {snap.short_id} released: {reason}")


def register(app: typer.Typer) -> None:
    app.command("forget")(forget)
    app.add_typer(hold_app, name="hold")
