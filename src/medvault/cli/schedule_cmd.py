"""`medvault schedule`: every scheduled job of medvault.toml with its next run (UTC and the
job's zone), its last result (as `serve` recorded it in the state directory) and whether it
runs now."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import typer

from medvault.cli.context import obtain, print_json

if TYPE_CHECKING:
    from medvault.scheduler.loop import JobListing


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def _local(moment: dt.datetime | None, zone: str) -> str | None:
    return _iso(moment.astimezone(ZoneInfo(zone))) if moment is not None else None


def _row(job: JobListing, now: dt.datetime) -> dict[str, Any]:
    state = job.state
    ids = state.last_run_ids if state is not None else ()
    current = state.current if state is not None and job.running else None
    return {
        "name": job.name,
        "kind": job.kind,
        "operation": job.operation,
        "source": job.source,
        "repository": job.repository,
        "schedule": job.schedule,
        "timezone": job.timezone,
        "catch_up": job.catch_up,
        "next_run": _iso(job.next_run),
        "next_run_local": _local(job.next_run, job.timezone),
        "overdue": job.next_run is not None and job.next_run <= now,
        "running": job.running,
        "running_since": _iso(current.started) if current is not None else None,
        "running_run_id": (current.run_ids or (None,))[-1] if current is not None else None,
        "last": None
        if state is None or state.last_status is None
        else {
            "status": state.last_status,
            "started": _iso(state.last_start),
            "ended": _iso(state.last_end),
            "run_id": ids[-1] if ids else None,
            "run_ids": list(ids),
            "exit_code": state.last_exit_code,
            "error": state.last_error,
        },
        "coalesced": state.coalesced if state is not None else 0,
        "missed": state.missed if state is not None else 0,
    }


def schedule(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every scheduled job: its schedule, next run, last result and whether it runs now."""
    from medvault.service.jobs import schedule_listing

    listing = schedule_listing(obtain(ctx).session)
    rows = [_row(job, listing.now) for job in listing.jobs]
    if as_json:
        print_json({"now": _iso(listing.now), "state": listing.state_path, "jobs": rows})
        return
    if not rows:
        print("no scheduled jobs: add [source.NAME.schedule] or [schedule] to medvault.toml")
        return
    print(f"{'JOB':<28} {'SCHEDULE':<16} {'NEXT RUN (UTC)':<20} {'LOCAL':<43} LAST")
    for row in rows:
        nxt = (row["next_run"] or "-").replace("+00:00", "Z")
        if row["overdue"]:
            nxt += " due"
        local = (
            f"{(row['next_run_local'] or '-')} {row['timezone']}"
            if row["timezone"] != "UTC"
            else "-"
        )
        last = row["last"]
        if row["running"]:
            result = f"running since {row['running_since']}"
        elif last is None:
            result = "never ran"
        else:
            result = (
                f"{last['status']} {last['ended'] or last['started']} run {last['run_id'] or '-'}"
            )
            if last["error"]:
                result += f": {last['error']}"
        print(f"{row['name']:<28} {row['schedule']:<16} {nxt:<20} {local:<43} {result}")


def register(app: typer.Typer) -> None:
    app.command("schedule")(schedule)
