"""`medvault status`: per source, the newest backup and WAL against the tier's RPO, and how far
the repository's secondary lags behind it (medvault.service.status computes it; the states are
said there). Once the report is printed it exits with its worst state, as a Nagios plugin or a
cron job reads it: 0 OK, 1 WARN, 2 CRITICAL. Errors keep their own exit codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from medvault.cli.context import human_bytes, obtain, print_json

if TYPE_CHECKING:
    from medvault.service.status import StatusReport


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Each source's newest backup and WAL against its tier's RPO, and the secondary's lag.
    Exits 0 when all is OK, 1 on WARN, 2 on CRITICAL."""
    from medvault.service.status import STATES
    from medvault.service.status import status as status_report

    report = status_report(obtain(ctx).session)
    if as_json:
        print_json(report.as_dict())
    else:
        _print(report)
    raise typer.Exit(STATES.index(report.state))


def _print(report: StatusReport) -> None:
    ratio = f", {report.dedup_ratio}x reduction" if report.dedup_ratio else ""
    stored, logical = human_bytes(report.stored_bytes), human_bytes(report.snapshot_bytes)
    print(
        f"repository {report.repository}: {report.snapshots} snapshot(s), "
        f"{stored} stored for {logical} backed up{ratio}"
    )
    print(
        f"{'SOURCE':<14} {'TIER':<10} {'SNAPS':>5} {'RPO':>5} {'LAST BACKUP':>12} "
        f"{'NEWEST WAL':>11} {'RTO':>5} {'LAST DRILL':>23}  STATE"
    )
    for row in report.sources:
        if row.last_drill is None:
            drill = "never"
        else:
            verdict = "ok" if row.last_drill_ok and row.drill_within_rto is not False else "FAIL"
            drill = f"{verdict} {row.last_drill_rto_s:.0f}s, {_age(row.last_drill_age_s)} ago"
        if row.drill_overdue:
            drill += ", due"
        print(
            f"{row.source:<14} {row.tier or '-':<10} {row.snapshots:>5} "
            f"{row.rpo or '-':>5} {_age(row.last_backup_age_s):>12} "
            f"{_age(row.newest_wal_age_s):>11} {row.rto or '-':>5} {drill:>23}  "
            f"{row.state}"
        )
        for problem in row.problems:
            print(f"  {row.source}: {problem}")
    for problem in report.problems:
        print(f"repository: {problem}")
    for left in report.drill_scratch:
        todo = (
            "the next drill here removes it"
            if left.drill_ended
            else "remove it by hand once that drill is over"
        )
        served = ""
        if left.server_pid is not None:
            served = f", and its PostgreSQL server still runs on it (pid {left.server_pid})"
            todo = "the next drill here stops that server and removes it"
        since = f", started {left.started}" if left.started else ""
        print(
            f"drill scratch: {left.state}: {left.path} holds a restored copy of patient "
            f"data ({left.owner}{since}){served}; {todo}"
        )
    lag = report.secondary
    if lag is not None:
        if lag.error is not None:
            print(f"secondary {lag.name}: {lag.state}: {lag.error}")
        else:
            print(
                f"secondary {lag.name}: {lag.state}: {lag.snapshots_missing} "
                f"snapshot(s) behind (oldest {_age(lag.oldest_missing_age_s)} old), "
                f"{lag.wal_missing} WAL file(s) behind"
            )


def register(app: typer.Typer) -> None:
    app.command("status")(status)
