"""`medvault prune`: delete what earlier runs condemned, then condemn what no snapshot needs
(see repository/prune.py for why this takes two runs and is safe beside running backups)."""

from __future__ import annotations

from dataclasses import asdict

import typer

from medvault.cli.context import human_bytes, obtain, print_json, progress_bar
from medvault.errors import UsageError


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
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Remove data no snapshot needs, safely beside running backups: deletes what an
    earlier prune condemned (once every backup older than that has ended), then condemns
    unused and mostly-unused packs for the next run."""
    from medvault.durations import parse_duration
    from medvault.repository.prune import Pruner

    if not 0 < repack_threshold <= 1:
        raise UsageError("--repack-threshold must be above 0 and at most 1")
    try:
        margin = parse_duration(young)
    except ValueError as exc:
        raise UsageError(f"--young: {exc}") from None
    repo = obtain(ctx).open()
    with (
        repo.lock(exclusive=False, purpose="prune"),
        progress_bar("repacking", None, not as_json) as advance,
    ):
        result = Pruner(
            repo, dry_run=dry_run, repack_unused=repack_threshold, young=margin, on_progress=advance
        ).run()
    if as_json:
        print_json(asdict(result) | {"dry_run": dry_run})
        return
    verb = "would " if dry_run else ""
    print(
        f"{verb}delete {result.deleted_packs} pack(s) condemned earlier, freeing "
        f"{human_bytes(result.freed_bytes)}; {verb}condemn {result.condemned_packs} pack(s) "
        f"({human_bytes(result.condemned_bytes)}, {result.repacked_packs} of them repacked: "
        f"{human_bytes(result.repacked_bytes)} still used) for the next prune"
    )
    if result.reprieved:
        print(f"{result.reprieved} condemned pack(s) are needed again and stay")
    if result.kept_young:
        print(f"left {result.kept_young} pack(s) younger than {young} alone")
    if result.kept_locked:
        print(f"kept {result.kept_locked} pack(s) that are locked against deletion (Object Lock)")
    for waiting in result.waiting:
        print(f"not yet: {waiting}")


def register(app: typer.Typer) -> None:
    app.command("prune")(prune)
