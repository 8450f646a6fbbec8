"""`medvault prune`: condemn what no snapshot needs, delete it once no backup that might still
depend on it is running (see repository/prune.py for why this is safe beside backups)."""

from __future__ import annotations

import typer

from medvault.cli.context import human_bytes, obtain, print_json


def prune(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Report; change nothing."),
    repack_threshold: float = typer.Option(
        0.5,
        "--repack-threshold",
        metavar="FRACTION",
        help="Rewrite packs at least this unused (0-1; 1 never repacks).",
    ),
    young: str = typer.Option(
        "1h", "--young", metavar="DURATION", help="Leave packs younger than this alone."
    ),
    wal: bool = typer.Option(
        True, "--wal/--no-wal", help="Also remove WAL no retained backup or PITR window needs."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Remove data no snapshot needs, safely beside running backups: condemns unused and
    mostly-unused packs (repacking what is still used), and deletes condemned packs once
    every backup older than their condemnation has ended: at once on a quiet repository,
    otherwise in a later run."""
    from medvault.cli.progress import progress_once_started
    from medvault.service.prune import PruneOptions
    from medvault.service.prune import prune as prune_repository

    options = PruneOptions(dry_run=dry_run, repack_threshold=repack_threshold, young=young, wal=wal)
    with progress_once_started("repacking", not as_json) as advance:
        pruned = prune_repository(obtain(ctx).session, options, on_progress=advance)
    if as_json:
        print_json(pruned.as_dict())
        return
    result, wal_result = pruned.packs, pruned.wal
    verb = "would " if dry_run else ""
    print(
        f"{verb}condemn {result.condemned_packs} pack(s) ({human_bytes(result.condemned_bytes)}"
        f", {result.repacked_packs} of them repacked: {human_bytes(result.repacked_bytes)} "
        f"still used); {verb}delete {result.deleted_packs} condemned pack(s), freeing "
        f"{human_bytes(result.freed_bytes)}"
    )
    if result.reprieved:
        print(f"{result.reprieved} condemned pack(s) are needed again and stay")
    if result.kept_young:
        print(f"left {result.kept_young} pack(s) younger than {young} alone")
    if result.kept_locked:
        print(f"kept {result.kept_locked} pack(s) that are locked against deletion (Object Lock)")
    for waiting in result.waiting:
        print(f"not yet: {waiting}")
    if wal_result is not None:
        print(
            f"{verb}remove {wal_result.deleted} WAL file(s) no retained backup or PITR window "
            f"needs, freeing {human_bytes(wal_result.freed_bytes)}"
        )
        for note in wal_result.notes:
            print(f"note: {note}")
        if wal_result.kept_locked:
            print(f"kept {wal_result.kept_locked} WAL file(s) locked against deletion")


def register(app: typer.Typer) -> None:
    app.command("prune")(prune)
