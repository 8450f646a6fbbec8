"""`medvault forget`: remove snapshots by id. Their data stays until a prune collects what no
snapshot needs. A snapshot that the store keeps immutable (Object Lock retention, an
append-only repository) is kept, and the reason is said."""

from __future__ import annotations

import datetime as dt

import typer

from medvault.cli.context import obtain, print_json
from medvault.errors import ObjectLocked


class ForgetRefused(ObjectLocked):
    """Some snapshots asked for could not be forgotten: they are locked."""


def forget(
    ctx: typer.Context,
    snapshot_ids: list[str] = typer.Argument(..., metavar="SNAPSHOT...", help="Ids or prefixes."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go; remove nothing."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Forget snapshots by id (their data goes with the next prune). Exits 21 when a snapshot
    is locked (Object Lock retention or an append-only repository) and was kept."""
    repo = obtain(ctx).open()
    chosen = {}
    for selector in snapshot_ids:
        snap = repo.find_snapshot(selector)
        chosen[snap.id] = snap
    results: list[dict[str, object]] = []
    with repo.lock(exclusive=True, purpose="forget"):
        for snap in chosen.values():
            entry: dict[str, object] = {"id": snap.id, "source": snap.source, "time": snap.time}
            name = f"snapshots/{snap.id}"
            try:
                if dry_run:
                    until = repo.backend.retention(name)
                    if repo.backend.immutable:
                        raise ObjectLocked("the repository is append-only")
                    if until is not None and until > dt.datetime.now(dt.UTC):
                        raise ObjectLocked(f"it is locked until {until:%Y-%m-%d %H:%M} UTC")
                    entry["action"] = "would remove"
                else:
                    repo.backend.delete(name)
                    entry["action"] = "removed"
            except ObjectLocked as exc:
                entry["action"] = "kept"
                entry["reason"] = str(exc)
            results.append(entry)
    if as_json:
        print_json(results)
    else:
        for entry in results:
            reason = f": {entry['reason']}" if "reason" in entry else ""
            print(f"{entry['action']} {str(entry['id'])[:12]} ({entry['source']}){reason}")
    kept = [e for e in results if e["action"] == "kept"]
    if kept:
        raise ForgetRefused(f"{len(kept)} snapshot(s) kept: locked against deletion")


def register(app: typer.Typer) -> None:
    app.command("forget")(forget)
