"""`medvault forget` and `medvault hold`.

forget removes snapshots: the ones named, or (with no ids) those the retention policies of
medvault.toml no longer keep, per source. Their data stays until a prune collects what no
snapshot needs. A snapshot on legal hold is never removed; one the store keeps immutable
(Object Lock retention, an append-only repository) is kept, and the reason said."""

from __future__ import annotations

from dataclasses import asdict

import typer

from medvault.cli.context import obtain, print_json
from medvault.errors import ForgetRefused


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
    from medvault.service.forget import ForgetOptions
    from medvault.service.forget import forget as forget_snapshots

    options = ForgetOptions(tuple(snapshot_ids or ()), source=source, dry_run=dry_run)
    result = forget_snapshots(obtain(ctx).session, options)
    if as_json:
        print_json([asdict(entry) for entry in result.outcomes])
    else:
        for entry in result.outcomes:
            why = entry.reason or ", ".join(entry.rules)
            print(
                f"{entry.action:<12} {entry.id[:12]}  {entry.source:<12} "
                f"{entry.time[:19].replace('T', ' ')}  {why}"
            )
    if result.incomplete is not None:
        raise ForgetRefused(result.incomplete)


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
    from medvault.service.holds import hold_add as add

    done = add(obtain(ctx).session, snapshot=snapshot, reason=reason)
    snap, hold = done.snapshot, done.hold
    print(f"snapshot {snap.short_id} ({snap.source}, {snap.time[:19]}) is on hold: {hold.reason}")


@hold_app.command("list")
def hold_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the snapshots on hold."""
    from medvault.service.holds import hold_list as listed

    holds = listed(obtain(ctx).session).holds
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
    from medvault.service.holds import hold_remove as remove

    snap = remove(obtain(ctx).session, snapshot=snapshot, reason=reason).snapshot
    print(f"hold on snapshot {snap.short_id} released: {reason}")


def register(app: typer.Typer) -> None:
    app.command("forget")(forget)
    app.add_typer(hold_app, name="hold")
