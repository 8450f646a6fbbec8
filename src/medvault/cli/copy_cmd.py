"""The second site: `medvault copy` (snapshots and WAL to another repository) and
`medvault repair --from` (mend this repository from that copy)."""

from __future__ import annotations

import typer

from medvault.cli.context import CliContext, human_bytes, obtain, print_json, progress_bar
from medvault.errors import UsageError


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
    from medvault.repository.copy import RepositoryCopier

    cli = obtain(ctx)
    _warm_s3_client(cli, from_repo, to_repo)
    origin = cli.open(selector=from_repo, other=True)
    target = cli.open(selector=to_repo, sharing=origin)
    if origin.config.repo_id == target.config.repo_id:
        raise UsageError(f"--from and --to are the same repository ({origin.config.repo_id})")
    if snapshot_ids:
        snapshots = [origin.find_snapshot(selector) for selector in snapshot_ids]
    else:
        snapshots = origin.list_snapshots()
    if source is not None:
        snapshots = [s for s in snapshots if s.source == source]
    with (
        target.lock(exclusive=False, purpose="copy") as lock,
        progress_bar("copying", None, not as_json) as advance,
    ):
        copier = RepositoryCopier(
            origin, target, retention_for=cli.retention_period, on_progress=advance
        )
        copier.lock = lock
        copier.copy_snapshots(snapshots)
        if wal:
            copier.copy_wal([source] if source else None)
    result = copier.result
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


def _warm_s3_client(cli: CliContext, *selectors: str) -> None:
    """Import boto3 on a thread while the first repository's key is derived (Argon2 runs
    without the GIL): a copy's fixed cost, paid once per run."""
    import threading

    urls = [cli.repository_target(selector=s)[0] for s in selectors]
    if any(url.startswith("s3://") for url in urls):
        threading.Thread(target=_import_boto3, name="medvault-boto3-import", daemon=True).start()


def _import_boto3() -> None:
    import contextlib

    with contextlib.suppress(ImportError):
        import boto3  # noqa: F401


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
    from medvault.repository.repair import repair_from

    cli = obtain(ctx)
    primary = cli.open()
    secondary = cli.open(selector=from_repo, other=True, sharing=primary)
    if primary.config.repo_id == secondary.config.repo_id:
        raise UsageError(f"--from names this repository itself ({primary.config.repo_id})")
    primary.fallback = None  # judge and mend the primary's own objects
    with primary.lock(exclusive=False, purpose="repair"):
        result = repair_from(
            primary, secondary, read_data=read_data, retention_for=cli.retention_period
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
