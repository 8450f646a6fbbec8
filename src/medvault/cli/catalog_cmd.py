"""`medvault runs` and `medvault stats`: the run history kept in the catalog."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Any

import typer

from medvault.cli.context import human_bytes, obtain, print_json

if TYPE_CHECKING:
    from medvault.service.history import StatsResult
    from medvault.service.runs import RunRecord
    from medvault.service.session import Session


def runs(
    ctx: typer.Context,
    source: str | None = typer.Option(None, "--source", "-s", help="Only this source."),
    operation: str | None = typer.Option(
        None, "--operation", "-o", help="Only this operation (backup, restore, drill, …)."
    ),
    failed: bool = typer.Option(
        False, "--failed", help="Only runs that did not end ok (failed, incomplete, refused)."
    ),
    since: str | None = typer.Option(
        None, "--since", help="Runs started since a date or time (UTC), or a duration: 7d."
    ),
    limit: int = typer.Option(50, "--limit", "-n", help="At most this many, newest first."),
    no_catch_up: bool = typer.Option(
        False, "--no-catch-up", help="Read the catalog only (offline): no repository opened."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The history of runs on this host's catalog, newest first; failures with their error.
    The catalog is first caught up with the repository's audit records (every host's)."""
    from medvault.service.history import RunsOptions, parse_since
    from medvault.service.history import runs as history

    start = parse_since(since, dt.datetime.now(dt.UTC)) if since is not None else None
    options = RunsOptions(source, operation, failed, start, limit, catch_up=not no_catch_up)
    found = history(_unattended(ctx), options).runs
    if as_json:
        print_json([_run_doc(record) for record in found])
        return
    print(
        f"{'STARTED (UTC)':<19}  {'OPERATION':<12}  {'SOURCE':<12}  {'STATUS':<10}  "
        f"{'TIME':>8}  {'STORED':>10}  {'RESTORED':>10}  {'USER@HOST':<20}  ERROR"
    )
    for r in found:
        line = (
            f"{r.started[:19].replace('T', ' '):<19}  {r.operation:<12}  {r.source or '-':<12}  "
            f"{r.status:<10}  {_seconds(r.duration_s):>8}  {human_bytes(r.bytes_stored):>10}  "
            f"{human_bytes(r.bytes_restored):>10}  {r.user + '@' + r.host:<20}  {r.error or ''}"
        )
        print(line.rstrip())
    print(f"{len(found)} run(s)")


def stats(
    ctx: typer.Context,
    days: int = typer.Option(30, "--days", "-d", help="The period: this many days to now."),
    no_catch_up: bool = typer.Option(
        False, "--no-catch-up", help="Read the catalog only (offline): no repository opened."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Per source and operation: runs, success rate, mean and p95 duration, bytes; per
    source: the share of the period within its tier's RPO, and drills within RTO."""
    from medvault.service.history import StatsOptions
    from medvault.service.history import stats as compute

    result = compute(_unattended(ctx), StatsOptions(days=days, catch_up=not no_catch_up))
    if as_json:
        print_json(_stats_doc(result))
        return
    _print_stats(result)


def _unattended(ctx: typer.Context) -> Session:
    """The session, its credentials never prompting: a repository with no credential
    configured is skipped by the catch-up, with a note."""
    cli = obtain(ctx)
    cli.interactive = False
    return cli.session


catalog_app = typer.Typer(
    help="The catalog of runs: rebuild it from the repository.", no_args_is_help=True
)


@catalog_app.command("rebuild")
def rebuild(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Recreate the catalog from the repository's audit records alone (every chain, every
    host), and this host's spooled runs; report what it holds."""
    from medvault.service.catchup import rebuild as recreate

    result = recreate(obtain(ctx).session)
    if as_json:
        print_json(dataclasses.asdict(result))
        return
    print(
        f"catalog {result.catalog} rebuilt: {result.runs} run(s); {result.records} audit "
        f"record(s) read from {result.chains} chain(s) of {result.repositories} "
        f"repositor{'y' if result.repositories == 1 else 'ies'}, {result.spooled} spooled"
        + (f", {result.skipped} left out" if result.skipped else "")
    )


def _run_doc(record: RunRecord) -> dict[str, Any]:
    return {**record._asdict(), "timestamp": record.timestamp}


def _stats_doc(result: StatsResult) -> dict[str, Any]:
    doc = dataclasses.asdict(result)
    doc["since"] = result.since.isoformat(timespec="seconds")
    doc["until"] = result.until.isoformat(timespec="seconds")
    return doc


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def _print_stats(result: StatsResult) -> None:
    print(
        f"{result.since.strftime('%Y-%m-%d %H:%M')} .. {result.until.strftime('%Y-%m-%d %H:%M')} "
        "UTC"
    )
    print(
        f"{'SOURCE':<12}  {'OPERATION':<12}  {'RUNS':>6}  {'OK':>6}  {'MEAN':>8}  {'P95':>8}  "
        f"{'READ':>10}  {'STORED':>10}  {'RESTORED':>10}"
    )
    for o in result.operations:
        print(
            f"{o.source or '-':<12}  {o.operation:<12}  {o.runs:>6}  "
            f"{_percent(o.success_rate):>6}  {_seconds(o.mean_duration_s):>8}  "
            f"{_seconds(o.p95_duration_s):>8}  {human_bytes(o.bytes_read):>10}  "
            f"{human_bytes(o.bytes_stored):>10}  {human_bytes(o.bytes_restored):>10}"
        )
    if result.sources:
        print()
        print(f"{'SOURCE':<12}  {'TIER':<10}  {'RPO':>6}  {'WITHIN RPO':>10}  DRILLS")
        for s in result.sources:
            drills = (
                f"{s.drills}, {s.drills_passed} passed, {s.drills_within_rto} within RTO"
                if s.drills
                else "-"
            )
            print(
                f"{s.source or '-':<12}  {s.tier or '-':<10}  {s.rpo or '-':>6}  "
                f"{_percent(s.within_rpo):>10}  {drills}"
            )


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
    app.command("stats")(stats)
    app.add_typer(catalog_app, name="catalog")
