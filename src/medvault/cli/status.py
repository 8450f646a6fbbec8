"""`medvault status`: per source, the newest backup and WAL against the tier's RPO, and how far
the repository's secondary lags behind it. States: OK, WARN (past the RPO, within twice
it; or the secondary behind), CRITICAL (beyond twice the RPO; or the secondary unreachable;
or a drill's scratch copy of patient data left on this host)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import typer

from medvault.cli.context import human_bytes, obtain, print_json
from medvault.errors import MedvaultError

if TYPE_CHECKING:
    from medvault.cli.context import CliContext
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository

OK, WARN, CRITICAL = "OK", "WARN", "CRITICAL"


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _rpo_state(age: float | None, rpo: dt.timedelta | None) -> str:
    if age is None:
        return CRITICAL
    if rpo is None or age <= rpo.total_seconds():
        return OK
    return WARN if age <= 2 * rpo.total_seconds() else CRITICAL


def _source_rows(cli: CliContext, repo: Repository, snaps: list[Snapshot]) -> list[dict[str, Any]]:
    from medvault.clocks import TOLERANCE, ahead_by, describe_span
    from medvault.durations import parse_duration
    from medvault.repository.wal import WalArchive
    from medvault.verification.drills import list_results

    drills = list_results(repo)
    last_drills = {drill.source: drill for drill in drills}

    now = dt.datetime.now(dt.UTC)
    configured = cli.settings.source if cli.configured_sources() else {}
    names = sorted({*configured, *(s.source for s in snaps)})
    rows = []
    for name in names:
        own = [s for s in snaps if s.source == name]
        section = configured.get(name)
        tier_name = section.tier if section is not None else (own[-1].tier if own else None)
        tier = cli.settings.tier.get(tier_name) if tier_name and configured else None
        rpo = parse_duration(tier.rpo) if tier is not None and tier.rpo else None
        problems = [
            f"clock skew: snapshot {s.short_id} is dated {s.time}, "
            f"{describe_span(ahead)} ahead of this host (written on {s.host})"
            for s in own
            if (ahead := ahead_by(s.taken, now)) is not None
        ]
        newest = repo.newest(own)
        last = (
            _parse_time(newest.end_time)
            if newest is not None and newest.end_time
            else (newest.taken if newest is not None else None)
        )
        backup_age = (now - last).total_seconds() if last else None
        wal_age = None
        newest_wal = None
        if (section is not None and section.kind == "postgres") or any(
            s.kind == "postgres.physical" for s in own
        ):
            archive = WalArchive(repo, name)
            wal_names = archive.names()
            if wal_names:
                newest_wal = wal_names[-1]
                archived = archive.archived_at(newest_wal)
                wal_age = now.timestamp() - archived if archived else None
                if wal_age is not None and -wal_age > TOLERANCE.total_seconds():
                    problems.append(
                        f"clock skew: WAL {newest_wal} was archived "
                        f"{describe_span(dt.timedelta(seconds=-wal_age))} in this host's future"
                    )
                    wal_age = None
        # With WAL archiving, what could be lost is what came after the newest archived WAL.
        ages = [a for a in (backup_age, wal_age) if a is not None]
        exposure = min(ages) if ages else None
        drill = last_drills.get(name)
        rto = parse_duration(tier.rto) if tier is not None and tier.rto else None
        state = _rpo_state(exposure, rpo)
        if drill is not None and not drill.ok and state == OK:
            state = WARN  # the last restore test failed
        drill_every = parse_duration(tier.drill_every) if tier and tier.drill_every else None
        passed = [d for d in drills if d.source == name and d.ok]
        drill_overdue = drill_every is not None and (
            not passed
            or (now - _parse_time(passed[-1].started)).total_seconds() > drill_every.total_seconds()
        )
        if drill_overdue and state == OK:
            state = WARN  # not proven restorable recently enough
        if problems and state == OK:
            state = WARN
        rows.append(
            {
                "source": name,
                "tier": tier_name,
                "rpo": tier.rpo if tier is not None else None,
                "snapshots": len(own),
                "last_backup": own[-1].time if own else None,
                "last_backup_age_s": backup_age,
                "newest_wal": newest_wal,
                "newest_wal_age_s": wal_age,
                "rto": tier.rto if tier is not None else None,
                "last_drill": drill.started if drill else None,
                "last_drill_age_s": (
                    (now - _parse_time(drill.started)).total_seconds() if drill else None
                ),
                "last_drill_ok": drill.ok if drill else None,
                "last_drill_rto_s": drill.rto_s if drill else None,
                "drill_within_rto": (
                    None if drill is None or rto is None else drill.rto_s <= rto.total_seconds()
                ),
                "drill_every": tier.drill_every if tier is not None else None,
                "drill_overdue": drill_overdue,
                "problems": problems,
                "state": state,
            }
        )
    return rows


def _secondary_lag(
    cli: CliContext, repo: Repository, name: str, snaps: list[Snapshot]
) -> dict[str, Any]:
    from medvault.repository.copy import RepositoryCopier
    from medvault.repository.wal import WalArchive

    row: dict[str, Any] = {"name": name}
    try:
        other = cli.open(selector=name, other=True, sharing=repo)
        copier = RepositoryCopier(repo, other)
        missing = [s for s in snaps if copier.existing_copy(s) is None]
        wal_missing = 0
        for source in sorted({s.source for s in snaps} | _wal_sources(repo)):
            here = set(WalArchive(repo, source).names())
            there = set(WalArchive(other, source).names())
            wal_missing += len(here - there)
    except MedvaultError as exc:
        row.update(state=CRITICAL, error=str(exc))
        return row
    now = dt.datetime.now(dt.UTC)
    oldest = min((s.taken for s in missing), default=None)
    row.update(
        snapshots_missing=len(missing),
        oldest_missing=oldest.isoformat() if oldest else None,
        oldest_missing_age_s=(now - oldest).total_seconds() if oldest else None,
        wal_missing=wal_missing,
        state=OK if not missing and not wal_missing else WARN,
    )
    return row


def _lock_problems(repo: Repository) -> list[str]:
    """Locks whose holders' clocks disagree with the store's, and locks that are not locks."""
    table = repo.locks()
    problems = [f"{bad.describe()}; `medvault unlock` removes it" for bad in table.malformed]
    if any(lock.clock_skew is not None for lock in table.locks):
        now = repo.store_time()
        problems += [
            f"clock skew: {lock.describe(now)}"
            for lock in table.locks
            if lock.clock_skew is not None
        ]
    return problems


def _wal_sources(repo: Repository) -> set[str]:
    from medvault.repository.wal import archived_sources

    return set(archived_sources(repo))


def _drill_scratch(cli: CliContext) -> list[dict[str, Any]]:
    """Scratch directories of drills no longer running (killed before they could remove
    their restored copy), in the configured scratch root and the system's temporary
    directory, on this host."""
    import tempfile

    from medvault.verification.scratch import find_leftovers, scratch_root

    roots = [scratch_root(cli.settings.drill.scratch), tempfile.gettempdir()]
    return [
        {
            "path": item.path,
            "owner": item.owner,
            "started": item.started,
            "drill_ended": item.ended,
            "server_pid": item.server,
            "state": CRITICAL,
        }
        for item in find_leftovers(roots)
    ]


def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Each source's newest backup and WAL against its tier's RPO, and the secondary's lag."""
    cli = obtain(ctx)
    repo = cli.open()
    _, settings = cli.repository_target()
    snaps = repo.list_snapshots()
    stored = repo.stored_bytes()
    logical = sum(int(s.stats.get("total_bytes", 0)) for s in snaps)
    report: dict[str, Any] = {
        "repository": repo.url,
        "snapshots": len(snaps),
        "stored_bytes": stored,
        "snapshot_bytes": logical,
        # What the snapshots hold against what the packs take: dedup and compression together.
        "dedup_ratio": round(logical / stored, 2) if stored else None,
        "sources": _source_rows(cli, repo, snaps),
        "problems": _lock_problems(repo),
        "secondary": None,
        "drill_scratch": _drill_scratch(cli),
    }
    if settings is not None and settings.secondary is not None:
        report["secondary"] = _secondary_lag(cli, repo, settings.secondary, snaps)
    if as_json:
        print_json(report)
        return
    ratio = f", {report['dedup_ratio']}x reduction" if report["dedup_ratio"] else ""
    print(
        f"repository {report['repository']}: {len(snaps)} snapshot(s), "
        f"{human_bytes(stored)} stored for {human_bytes(logical)} backed up{ratio}"
    )
    print(
        f"{'SOURCE':<14} {'TIER':<10} {'SNAPS':>5} {'RPO':>5} {'LAST BACKUP':>12} "
        f"{'NEWEST WAL':>11} {'RTO':>5} {'LAST DRILL':>23}  STATE"
    )
    for row in report["sources"]:
        if row["last_drill"] is None:
            drill = "never"
        else:
            verdict = (
                "ok" if row["last_drill_ok"] and row["drill_within_rto"] is not False else "FAIL"
            )
            drill = f"{verdict} {row['last_drill_rto_s']:.0f}s, {_age(row['last_drill_age_s'])} ago"
        if row["drill_overdue"]:
            drill += ", due"
        print(
            f"{row['source']:<14} {row['tier'] or '-':<10} {row['snapshots']:>5} "
            f"{row['rpo'] or '-':>5} {_age(row['last_backup_age_s']):>12} "
            f"{_age(row['newest_wal_age_s']):>11} {row['rto'] or '-':>5} {drill:>23}  "
            f"{row['state']}"
        )
        for problem in row["problems"]:
            print(f"  {row['source']}: {problem}")
    for problem in report["problems"]:
        print(f"repository: {problem}")
    for left in report["drill_scratch"]:
        todo = (
            "the next drill here removes it"
            if left["drill_ended"]
            else "remove it by hand once that drill is over"
        )
        served = ""
        if left["server_pid"] is not None:
            served = f", and its PostgreSQL server still runs on it (pid {left['server_pid']})"
            todo = "the next drill here stops that server and removes it"
        since = f", started {left['started']}" if left["started"] else ""
        print(
            f"drill scratch: {left['state']}: {left['path']} holds a restored copy of patient "
            f"data ({left['owner']}{since}){served}; {todo}"
        )
    lag = report["secondary"]
    if lag is not None:
        if "error" in lag:
            print(f"secondary {lag['name']}: {lag['state']}: {lag['error']}")
        else:
            print(
                f"secondary {lag['name']}: {lag['state']}: {lag['snapshots_missing']} "
                f"snapshot(s) behind (oldest {_age(lag['oldest_missing_age_s'])} old), "
                f"{lag['wal_missing']} WAL file(s) behind"
            )


def register(app: typer.Typer) -> None:
    app.command("status")(status)
