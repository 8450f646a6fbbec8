"""`medvault restore`."""

from __future__ import annotations

import typer

from medvault.cli.context import human_bytes, obtain, print_json, progress_bar


def restore(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="Snapshot id, prefix, latest or latest:SOURCE."),
    target: str = typer.Option(..., "--target", "-t", help="Directory to restore into."),
    includes: list[str] = typer.Option(
        [], "--include", help="Restore only this path (repeatable)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in the target."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Restore a snapshot into a directory, verifying every blob on the way."""
    from medvault.recovery.files import restore_files

    repo = obtain(ctx).open()
    snap = repo.find_snapshot(snapshot)
    total = int(snap.stats.get("total_bytes", 0)) or None
    with progress_bar("restoring", total if not includes else None, not as_json) as advance:
        result = restore_files(
            repo, snap, target, includes=includes, overwrite=overwrite, on_progress=advance
        )
    if as_json:
        print_json(
            {
                "snapshot": snap.id,
                "target": target,
                "files": result.files,
                "dirs": result.dirs,
                "symlinks": result.symlinks,
                "bytes_written": result.bytes_written,
                "duration_s": round(result.duration, 3),
                "skipped": result.skipped,
            }
        )
        return
    print(
        f"restored snapshot {snap.short_id} to {target}: {result.files} files, "
        f"{result.dirs} directories, {result.symlinks} symlinks, "
        f"{human_bytes(result.bytes_written)} in {result.duration:.1f} s"
    )


def register(app: typer.Typer) -> None:
    app.command()(restore)
