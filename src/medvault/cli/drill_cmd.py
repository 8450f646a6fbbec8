"""`medvault drill` and `medvault drills`: restore tests with validation and measured RTO."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import typer

from medvault.cli.context import obtain, print_json
from medvault.errors import SnapshotNotFound, UsageError

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository


def drill(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="A source from medvault.toml, or a source name."),
    snapshot: str | None = typer.Option(None, "--snapshot", help="Default: the newest."),
    scratch: str | None = typer.Option(
        None,
        "--scratch",
        help="Where restored files go for the drill (removed after); default: [drill] "
        "scratch in medvault.toml, else the system's temporary directory.",
    ),
    to_latest: bool = typer.Option(
        False,
        "--to-latest",
        help="Physical backups: replay to the newest archived WAL (proves the WAL chain), "
        "not just to the end of the backup.",
    ),
    kind: str | None = typer.Option(
        None,
        "--kind",
        metavar="physical|logical|files",
        help="Drill the newest snapshot of this kind (default: the newest of any; "
        "--to-latest implies physical).",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Restore a snapshot into scratch space, validate it, measure the time against the
    tier's RTO, record the result in the repository. Exits 23 when the drill fails."""
    from medvault.config import PostgresSourceSettings
    from medvault.durations import parse_duration
    from medvault.errors import DrillFailed
    from medvault.postgres.server import dsn_field
    from medvault.verification.drills import run_drill, store_result
    from medvault.verification.physical_drill import DrillOptions

    kinds = {"physical": "postgres.physical", "logical": "postgres.logical", "files": "files"}
    if kind is not None and kind not in kinds:
        raise UsageError("--kind is physical, logical or files")
    if snapshot is not None and kind is not None:
        raise UsageError("give --snapshot or --kind, not both")
    if to_latest and kind not in (None, "physical"):
        raise UsageError("--to-latest replays WAL: it drills physical backups only")
    cli = obtain(ctx)
    repo = cli.open(source)
    if snapshot is not None:
        snap = repo.find_snapshot(snapshot)
    elif kind is None and not to_latest:
        snap = repo.find_snapshot(f"latest:{source}")
    else:
        snap = _newest(repo, source, kind or "physical", kinds[kind or "physical"])
    settings = cli.settings.source.get(source) if cli.configured_sources() else None
    tier = cli.settings.tier.get(settings.tier) if settings and settings.tier else None
    rto = parse_duration(tier.rto) if tier is not None and tier.rto else None
    postgres = settings if isinstance(settings, PostgresSourceSettings) else None
    options = DrillOptions()
    if postgres is not None:
        options = DrillOptions(
            tuple(postgres.drill.checks),
            postgres.drill.database or dsn_field(postgres.dsn, "dbname") or "postgres",
            postgres.drill.shared_buffers,
        )
    result = run_drill(
        repo,
        snap,
        rto=rto,
        scratch=scratch or cli.settings.drill.scratch,
        dsn=postgres.dsn if postgres else None,
        pg_bin=postgres.pg_bin if postgres else None,
        to_latest=to_latest,
        options=options,
    )
    store_result(repo, result)
    if as_json:
        print_json(asdict(result) | {"within_rto": result.within_rto})
    else:
        state = "PASSED" if result.ok else "FAILED"
        target = f" (RTO {tier.rto})" if tier is not None and tier.rto else ""
        print(
            f"drill {state}: snapshot {snap.short_id} of {snap.source} ({snap.kind}) restored "
            f"and validated in {result.rto_s:.1f} s{target}"
        )
        for check in result.checks:
            print(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
        if result.error:
            print(f"  error: {result.error}")
    if not result.ok:
        reason = result.error or next(
            (f"{c.name}: {c.detail}" for c in result.checks if not c.ok), ""
        )
        raise DrillFailed(f"drill of snapshot {snap.short_id} failed: {reason}")


def _newest(repo: Repository, source: str, kind: str, snapshot_kind: str) -> Snapshot:
    from medvault.recovery.postgres import physical_snapshots

    if snapshot_kind == "postgres.physical":
        found = physical_snapshots(repo, source)  # complete ones, by consistency point
    else:
        found = sorted(
            (s for s in repo.list_snapshots() if s.source == source and s.kind == snapshot_kind),
            key=lambda s: s.taken,
        )
    newest = repo.newest(found)
    if newest is None:
        raise SnapshotNotFound(f"the repository holds no {kind} snapshot of {source}")
    return newest


def drills(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Past drill results, oldest first."""
    from medvault.verification.drills import list_results

    results = list_results(obtain(ctx).open())
    if as_json:
        print_json([asdict(r) | {"within_rto": r.within_rto} for r in results])
        return
    for r in results:
        state = "PASSED" if r.ok else "FAILED"
        print(
            f"{r.started[:19]}  {r.source:<12} {r.kind:<18} {r.snapshot[:12]}  "
            f"{r.rto_s:>7.1f} s  {state}"
        )
    print(f"{len(results)} drill(s)")


def register(app: typer.Typer) -> None:
    app.command("drill")(drill)
    app.command("drills")(drills)
