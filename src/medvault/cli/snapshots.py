"""`medvault snapshots`, `ls`, `diff`."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer

from medvault.cli.context import human_bytes, obtain, print_json

if TYPE_CHECKING:
    from medvault.repository.records import Node, Snapshot
    from medvault.service.snapshots import Entry


def _type_label(snap: Snapshot) -> str:
    if snap.kind == "postgres.logical":
        return "logical"
    if snap.kind == "postgres.physical":
        return f"physical {snap.backup_type}"
    return snap.backup_type


def snapshots(
    ctx: typer.Context,
    source: str | None = typer.Option(None, "--source", "-s", help="Only this source."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List snapshots, oldest first."""
    from medvault.service.snapshots import snapshot_doc
    from medvault.service.snapshots import snapshots as listed

    snaps = listed(obtain(ctx).session, source=source).snapshots
    if as_json:
        print_json([snapshot_doc(s) for s in snaps])
        return
    print(f"{'ID':<12}  {'TIME (UTC)':<19}  {'SOURCE':<12}  {'TYPE':<16}  {'SIZE':>10}  PATHS")
    for s in snaps:
        size = human_bytes(int(s.stats.get("total_bytes", 0)))
        print(
            f"{s.short_id:<12}  {s.time[:19].replace('T', ' '):<19}  {s.source:<12}  "
            f"{_type_label(s):<16}  {size:>10}  {', '.join(s.paths)}"
        )
    print(f"{len(snaps)} snapshot(s)")


def _mtime(node: Node) -> str:
    return datetime.fromtimestamp(node.mtime_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def ls(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="Snapshot id, prefix, latest or latest:SOURCE."),
    path: str = typer.Argument("/", help="Directory or file inside the snapshot."),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List the files in a snapshot."""
    from medvault.service.snapshots import LsOptions
    from medvault.service.snapshots import ls as list_files

    options = LsOptions(snapshot, path, recursive=recursive)
    if as_json:
        listing = list_files(obtain(ctx).session, options)
        print_json([_entry_doc(entry) for entry in listing.entries])
        return
    # Printed as they are read: a snapshot may hold millions of files.
    list_files(obtain(ctx).session, options, on_entry=_print_entry)


def _entry_doc(entry: Entry) -> dict[str, object]:
    n = entry.node
    return {
        "path": entry.path,
        "type": n.type,
        "mode": oct(n.mode),
        "size": n.size,
        "uid": n.uid,
        "gid": n.gid,
        "user": n.user,
        "group": n.group,
        "mtime_ns": n.mtime_ns,
        **({"target": n.target.decode("utf-8", "backslashreplace")} if n.target else {}),
    }


def _print_entry(entry: Entry) -> None:
    node = entry.node
    kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(node.type, stat.S_IFREG)
    link = f" -> {node.target.decode('utf-8', 'backslashreplace')}" if node.target else ""
    print(
        f"{stat.filemode(kind | node.mode)}  {node.user or node.uid:<8}  "
        f"{node.size:>12}  {_mtime(node)}  {entry.path}{link}"
    )


def diff(
    ctx: typer.Context,
    first: str = typer.Argument(..., metavar="SNAP1"),
    second: str = typer.Argument(..., metavar="SNAP2"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show what changed between two snapshots (+ added, - removed, M content, U metadata,
    T type)."""
    from medvault.service.snapshots import diff as compare

    result = compare(obtain(ctx).session, first=first, second=second)
    changes = result.changes
    if as_json:
        print_json([{"change": c.kind, "path": c.path} for c in changes])
        return
    for change in changes:
        print(f"{change.kind}  {change.path}")
    print(
        f"{result.count('+')} added, {result.count('-')} removed, {result.count('M')} modified, "
        f"{result.count('U')} metadata only, {result.count('T')} type changed"
    )


def register(app: typer.Typer) -> None:
    app.command()(snapshots)
    app.command()(ls)
    app.command()(diff)
