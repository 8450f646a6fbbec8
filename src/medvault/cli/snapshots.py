"""`medvault snapshots`, `ls`, `diff`."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer

from medvault.cli.context import human_bytes, obtain, print_json

if TYPE_CHECKING:
    from medvault.repository.records import Node, Snapshot


def _snapshot_doc(snap: Snapshot) -> dict[str, object]:
    from medvault.repository.records import snapshot_fields

    return {"id": snap.id, **snapshot_fields(snap), "tree": snap.tree.hex()}


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
    repo = obtain(ctx).open(source)
    snaps = [s for s in repo.list_snapshots() if source is None or s.source == source]
    if as_json:
        print_json([_snapshot_doc(s) for s in snaps])
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
    from medvault.repository.browse import list_entries

    repo = obtain(ctx).open()
    snap = repo.find_snapshot(snapshot)
    entries = list_entries(repo, snap, path, recursive=recursive)
    if as_json:
        print_json(
            [
                {
                    "path": p,
                    "type": n.type,
                    "mode": oct(n.mode),
                    "size": n.size,
                    "uid": n.uid,
                    "gid": n.gid,
                    "user": n.user,
                    "group": n.group,
                    "mtime_ns": n.mtime_ns,
                    **(
                        {"target": n.target.decode("utf-8", "backslashreplace")} if n.target else {}
                    ),
                }
                for p, n in entries
            ]
        )
        return
    for entry_path, node in entries:
        kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(node.type, stat.S_IFREG)
        link = f" -> {node.target.decode('utf-8', 'backslashreplace')}" if node.target else ""
        print(
            f"{stat.filemode(kind | node.mode)}  {node.user or node.uid:<8}  "
            f"{node.size:>12}  {_mtime(node)}  {entry_path}{link}"
        )


def diff(
    ctx: typer.Context,
    first: str = typer.Argument(..., metavar="SNAP1"),
    second: str = typer.Argument(..., metavar="SNAP2"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show what changed between two snapshots (+ added, - removed, M content, U metadata,
    T type)."""
    from medvault.repository.browse import diff_snapshots

    repo = obtain(ctx).open()
    old, new = repo.find_snapshot(first), repo.find_snapshot(second)
    changes = diff_snapshots(repo, old, new)
    if as_json:
        print_json([{"change": c.kind, "path": c.path} for c in changes])
        return
    for change in changes:
        print(f"{change.kind}  {change.path}")
    counts = {k: sum(1 for c in changes if c.kind == k) for k in "+-MUT"}
    print(
        f"{counts['+']} added, {counts['-']} removed, {counts['M']} modified, "
        f"{counts['U']} metadata only, {counts['T']} type changed"
    )


def register(app: typer.Typer) -> None:
    app.command()(snapshots)
    app.command()(ls)
    app.command()(diff)
