"""The second site: `medvault copy` (snapshots and WAL to another repository) and
`medvault repair --from` (mend this repository from that copy)."""

from __future__ import annotations

import typer

from medvault.cli.context import human_bytes, obtain, print_json


def copy(
    ctx: typer.Context,
    from_repo: str = typer.Option(..., "--from", metavar="REPO", help="Name or path/URL."),
    to_repo: str = typer.Option(..., "--to", metavar="REPO", help="Name or path/URL."),
    snapshot_ids: list[str] = typer.Option(
        [], "--snapshot", metavar="ID", help="Only these snapshots (repeat); default: all."
    ),
    source: str | None = typer.Option(None, "--source", help="Only this source's snapshots."),
    wal: bool = typer.Option(True, "--wal/--no-wal", help="Copy the WAL archive too."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Copy snapshots and WAL the target lacks. The source is only read; a killed copy is
    resumed by running it again. With shared keys (`init --copy-keys-from`) packs move as
    stored; otherwise every blob is re-encrypted for the target."""
    from medvault.cli.progress import progress_once_started
    from medvault.service.copy import CopyOptions
    from medvault.service.copy import copy as copy_snapshots

    options = CopyOptions(
        from_repo=from_repo,
        to_repo=to_repo,
        snapshots=tuple(snapshot_ids),
        source=source,
        wal=wal,
    )
    with progress_once_started("copying", not as_json) as advance:
        result = copy_snapshots(obtain(ctx).session, options, on_progress=advance)
    if as_json:
        print_json(
            {
                "mode": result.mode,
                "copied": result.copied,
                "present": result.present,
                "packs": result.packs,
                "blobs": result.blobs,
                "bytes_read": result.bytes_read,
                "wal_copied": result.wal_copied,
                "wal_present": result.wal_present,
            }
        )
        return
    how = "packs as stored" if result.mode == "raw" else "re-encrypted"
    print(
        f"copied {len(result.copied)} snapshot(s) ({how}), {len(result.present)} already there; "
        f"{result.wal_copied} WAL file(s) copied, {result.wal_present} already there; "
        f"{human_bytes(result.bytes_read)} read"
    )


def repair(
    ctx: typer.Context,
    from_repo: str = typer.Option(..., "--from", metavar="REPO", help="The second site."),
    read_data: bool = typer.Option(
        True, "--read-data/--quick", help="Hash every pack (default), or only look for them."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Replace missing or damaged packs, snapshots and WAL of this repository with the
    copies at a second site, and bring over what it lacks. Exits 13 when something could
    not be repaired."""
    from medvault.errors import IntegrityError
    from medvault.service.copy import RepairOptions
    from medvault.service.copy import repair as repair_from

    result = repair_from(
        obtain(ctx).session, RepairOptions(from_repo=from_repo, read_data=read_data)
    )
    if as_json:
        print_json(
            {
                "packs_checked": result.packs_checked,
                "packs_replaced": result.packs_replaced,
                "snapshots_replaced": result.snapshots_replaced,
                "wal_replaced": result.wal_replaced,
                "snapshots_copied": result.snapshots_copied,
                "wal_copied": result.wal_copied,
                "unrepaired": result.unrepaired,
                "ok": result.ok,
            }
        )
    else:
        print(
            f"checked {result.packs_checked} packs: replaced {len(result.packs_replaced)} "
            f"pack(s), {len(result.snapshots_replaced)} snapshot(s), "
            f"{len(result.wal_replaced)} WAL file(s); copied {result.snapshots_copied} "
            f"snapshot(s) and {result.wal_copied} WAL file(s) the repository lacked"
        )
        for problem in result.unrepaired:
            print(f"not repaired: {problem}")
    if not result.ok:
        raise IntegrityError(f"{len(result.unrepaired)} object(s) could not be repaired")


def register(app: typer.Typer) -> None:
    app.command("copy")(copy)
    app.command("repair")(repair)
