"""`medvault drill` and `medvault drills`: restore tests with validation and measured RTO."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import typer

from medvault.cli.context import obtain, print_json
from medvault.errors import DrillFailed

if TYPE_CHECKING:
    from medvault.service.drill import DrillRun


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
        metavar="physical|logical|files|csv",
        help="Drill the newest snapshot of this kind (default: the newest of any; "
        "--to-latest implies physical).",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Restore a snapshot into scratch space, validate it, measure the time against the
    tier's RTO, record the result in the repository. Exits 23 when the drill fails."""
    from medvault.service.drill import DrillOptions
    from medvault.service.drill import drill as run_drill

    options = DrillOptions(source, snapshot, scratch, to_latest, kind)
    done = run_drill(obtain(ctx).session, options)
    _show(done, as_json)
    if done.failure is not None:
        # Recorded already: what it found is above, then the error and its exit code.
        raise DrillFailed(done.failure)


def _show(done: DrillRun, as_json: bool) -> None:
    result, snap = done.result, done.snapshot
    if as_json:
        print_json(asdict(result) | {"within_rto": result.within_rto})
        return
    state = "PASSED" if result.ok else "FAILED"
    target = f" (RTO {done.rto})" if done.rto else ""
    print(
        f"drill {state}: snapshot {snap.short_id} of {snap.source} ({snap.kind}) restored "
        f"and validated in {result.rto_s:.1f} s{target}"
    )
    for check in result.checks:
        print(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if result.error:
        print(f"  error: {result.error}")


def drills(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Past drill results, oldest first."""
    from medvault.service.drill import drills as drill_history

    results = drill_history(obtain(ctx).session).results
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
