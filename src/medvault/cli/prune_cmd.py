"""`medvault prune`: condemn what no snapshot needs, delete it once no backup that might still
depend on it is running (see repository/prune.py for why this is safe beside backups)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import TYPE_CHECKING

import typer

from medvault.cli.context import human_bytes, obtain, print_json, progress_bar
from medvault.errors import UsageError

if TYPE_CHECKING:
    from medvault.cli.context import CliContext


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
    from medvault.durations import parse_duration
    from medvault.repository.prune import Pruner

    if not 0 < repack_threshold <= 1:
        raise UsageError("--repack-threshold must be above 0 and at most 1")
    try:
        margin = parse_duration(young)
    except ValueError as exc:
        raise UsageError(f"--young: {exc}") from None
    cli = obtain(ctx)
    repo = cli.open()
    with (
        repo.lock(exclusive=False, scope="prune", purpose="prune") as lock,
        progress_bar("repacking", None, not as_json) as advance,
    ):
        result = Pruner(
            repo,
            lock,
            dry_run=dry_run,
            repack_unused=repack_threshold,
            young=margin,
            on_progress=advance,
        ).run()
        wal_result = None
        if wal:
            from medvault.sources.postgres.walretention import prune_wal

            wal_result = prune_wal(repo, _pitr_windows(cli), young=margin, dry_run=dry_run)
    if as_json:
        print_json(
            asdict(result) | {"dry_run": dry_run, "wal": asdict(wal_result) if wal_result else None}
        )
        return
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


def _pitr_windows(cli: CliContext) -> dict[str, dt.timedelta]:
    from medvault.config import PostgresSourceSettings
    from medvault.durations import parse_duration

    if not cli.configured_sources():
        return {}
    return {
        name: parse_duration(section.pitr_window)
        for name, section in cli.settings.source.items()
        if isinstance(section, PostgresSourceSettings) and section.pitr_window
    }


def register(app: typer.Typer) -> None:
    app.command("prune")(prune)
