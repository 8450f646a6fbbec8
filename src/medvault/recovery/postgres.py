"""Restore a physical PostgreSQL snapshot into a data directory and set up its recovery:
point-in-time (time, LSN, xid, restore point, immediate, latest) or a standby.

Every check that can fail runs before anything is written: the port, the data directory
(empty; or, for --delta, this cluster's and not running), tablespace locations, and the WAL
chain in the archive from the backup's start to the target. Then the files, then the recovery
settings in a marked block of postgresql.auto.conf, then (optionally) the server is started
and watched until recovery ends the way the target action says.

A restored cluster never archives into the production archive unless asked: its
postgresql.conf still carries production's archive_command, so the block turns archive_mode
off (a second cluster pushing the same WAL names would be refused as a conflict at best).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from medvault import childenv
from medvault.errors import (
    IntegrityError,
    RecoveryFailed,
    RestoreTargetError,
    SnapshotNotFound,
    SourceUnavailable,
    UsageError,
    WalMissing,
    first_line,
)
from medvault.postgres.datadir import (
    PG_CONTROL,
    read_control_data,
    read_system_identifier,
    running_postmaster,
)
from medvault.postgres.facts import KIND_PHYSICAL, PhysicalFacts
from medvault.postgres.lsn import (
    SEGMENT,
    format_lsn,
    is_lsn,
    parse_lsn,
    segment_name,
    segment_number,
    segment_timeline,
)
from medvault.postgres.timelines import (
    Period,
    history_name,
    missing_segments,
    period_of,
    period_segments,
    timeline_periods,
)
from medvault.recovery.files import RestoreResult, restore_files

if TYPE_CHECKING:
    from medvault.postgres.walrecords import TransactionEnd
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.repository.wal import WalArchive

TARGET_KINDS = ("latest", "immediate", "time", "lsn", "xid", "name")
TARGET_ACTIONS = ("promote", "pause", "shutdown")
BLOCK_BEGIN = "# medvault recovery settings: begin"
BLOCK_END = "# medvault recovery settings: end"
LOG_NAME = "medvault-recovery.log"
WAIT_TIMEOUT_S = 3600.0
POLL_FIRST_S = 0.02
POLL_MAX_S = 0.3
NOT_REACHED = "recovery ended before configured recovery target was reached"
_RESTORE_POINT_MAX = 63  # MAXFNAMELEN - 1 in PostgreSQL
# How far the store's clock (object times) may lag the server's (commit times).
CLOCK_SKEW_MARGIN_S = 30
# Segments read back from the newest while looking for the last transaction (64 x 16 MiB).
REACH_SEARCH_SEGMENTS = 64


# -- the recovery target --------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryTarget:
    """Where recovery stops, and what the server does there."""

    kind: str = "latest"  # one of TARGET_KINDS
    value: str = ""  # time (ISO-8601, normalised to UTC), LSN, xid or restore point name
    action: str = "promote"
    timeline: str = "latest"  # latest, current, or a timeline number

    def settings(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.kind == "immediate":
            out["recovery_target"] = "immediate"
        elif self.kind != "latest":
            out[f"recovery_target_{self.kind}"] = self.value
        out["recovery_target_timeline"] = self.timeline
        if self.kind != "latest":
            out["recovery_target_action"] = self.action
        return out

    @property
    def moment(self) -> datetime:
        """A time target's time, aware, in UTC."""
        return datetime.fromisoformat(self.value).astimezone(UTC)

    def describe(self) -> str:
        if self.kind in ("latest", "immediate"):
            return self.kind
        return f"{self.kind} {self.value}"


def parse_time(text: str) -> datetime:
    """An ISO-8601 time; without a zone it is this host's local time."""
    try:
        moment = datetime.fromisoformat(text.strip().replace(" UTC", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--target-time {text!r} is not a time; give ISO-8601, e.g. 2024-05-01T14:30:00+02:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.astimezone(UTC)


def make_target(
    *,
    target: str | None = None,
    time_: str | None = None,
    lsn: str | None = None,
    xid: str | None = None,
    name: str | None = None,
    action: str = "promote",
    timeline: str = "latest",
    now: datetime | None = None,
) -> RecoveryTarget:
    """Validate the command-line target options into one RecoveryTarget."""
    given = [
        (kind, value)
        for kind, value in (
            ("target", target),
            ("time", time_),
            ("lsn", lsn),
            ("xid", xid),
            ("name", name),
        )
        if value is not None
    ]
    if len(given) > 1:
        shown = ", ".join(
            "--recovery-target" if k == "target" else f"--target-{k}" for k, _ in given
        )
        raise UsageError(f"give one recovery target, not several ({shown})")
    if action not in TARGET_ACTIONS:
        raise UsageError(f"--target-action must be one of {', '.join(TARGET_ACTIONS)}")
    if timeline not in ("latest", "current") and not timeline.isdigit():
        raise UsageError("--target-timeline is latest, current or a timeline number")
    if not given or given[0] == ("target", "latest"):
        if action != "promote":
            raise UsageError(
                "--target-action needs a recovery target: without one (latest) the server "
                "replays everything archived and is promoted"
            )
        return RecoveryTarget("latest", "", action, timeline)
    kind, value = given[0]
    assert value is not None
    if kind == "target":
        if value not in ("latest", "immediate"):
            raise UsageError("--recovery-target is immediate or latest")
        return RecoveryTarget(value, "", action, timeline)
    if kind == "time":
        moment = parse_time(value)
        if moment > (now or datetime.now(UTC)):
            raise UsageError(
                f"--target-time {value} is in the future: no WAL reaches it yet; "
                "give a past time, or --recovery-target latest for everything archived"
            )
        value = moment.isoformat(sep=" ")
    elif kind == "lsn":
        if not is_lsn(value):
            raise UsageError(f"--target-lsn {value!r} is not an LSN (like 0/3000028)")
        value = value.upper()
    elif kind == "xid":
        if not value.isdigit() or int(value) < 3:
            raise UsageError(f"--target-xid {value!r} is not a transaction id")
    elif kind == "name" and (not value or len(value.encode()) > _RESTORE_POINT_MAX):
        raise UsageError("--target-name must be 1 to 63 bytes long")
    return RecoveryTarget(kind, value, action, timeline)


# -- choosing a base backup ------------------------------------------------------------------


def physical_snapshots(repo: Repository, source: str) -> list[Snapshot]:
    """Complete physical backups of `source`, oldest consistent point first."""
    return [snap for snap, _facts in _physical_backups(repo, source)]


def _physical_backups(repo: Repository, source: str) -> list[tuple[Snapshot, PhysicalFacts]]:
    found = []
    for snap in repo.list_snapshots():
        if snap.kind != KIND_PHYSICAL or snap.source != source:
            continue
        try:
            found.append((snap, PhysicalFacts.of(snap)))
        except IntegrityError as exc:
            repo.warnings.append(f"backup {snap.short_id} left out: {exc}")
    return sorted(found, key=lambda pair: pair[1].consistent_at)


def choose_base_backup(repo: Repository, source: str, target: RecoveryTarget) -> Snapshot:
    """The newest backup that can reach the target: for a time, the newest that was
    consistent at or before it; for an LSN, the newest whose stop LSN is at or before it;
    otherwise the newest."""
    backups = _physical_backups(repo, source)
    if not backups:
        raise SnapshotNotFound(
            f"the repository holds no physical backup of source {source}; "
            f"take one with `medvault backup {source} --type full`"
        )
    if target.kind == "time":
        moment = target.moment
        usable = [snap for snap, facts in backups if facts.consistent_at <= moment]
        if not usable:
            oldest, facts = backups[0]
            raise SnapshotNotFound(
                f"no backup of {source} reaches back to {target.value}: the oldest usable time "
                f"is {facts.stop_time} (backup {oldest.short_id}); give a later "
                "--target-time"
            )
        return usable[-1]
    if target.kind == "lsn":
        wanted = parse_lsn(target.value)
        reaching = [pair for pair in backups if pair[1].stop_lsn <= wanted]
        if not reaching:
            oldest, facts = min(backups, key=lambda pair: pair[1].stop_lsn)
            raise SnapshotNotFound(
                f"no backup of {source} reaches back to LSN {target.value}: the oldest usable "
                f"LSN is {format_lsn(facts.stop_lsn)} (backup {oldest.short_id})"
            )
        return max(reaching, key=lambda pair: pair[1].stop_lsn)[0]
    return backups[-1][0]


def check_target_reachable(snapshot: Snapshot, target: RecoveryTarget) -> None:
    """A target before the backup was consistent can never be reached from it."""
    facts = PhysicalFacts.of(snapshot)
    if target.kind == "time" and target.moment < facts.consistent_at:
        raise UsageError(
            f"target time {target.value} is before backup {snapshot.short_id} became consistent "
            f"({facts.stop_time}); restore an older backup, or let `medvault pitr "
            f"{snapshot.source}` choose one"
        )
    if target.kind == "lsn" and parse_lsn(target.value) < facts.stop_lsn:
        raise UsageError(
            f"target LSN {target.value} is before backup {snapshot.short_id} became consistent "
            f"(LSN {format_lsn(facts.stop_lsn)}); restore an older backup"
        )


# -- the WAL chain ------------------------------------------------------------------------


@dataclass(frozen=True)
class WalRange:
    """The WAL recovery will read: from the backup's first segment to `last` on `timeline`."""

    timeline: int
    first: str
    last: str


def _target_timeline(archive: WalArchive, snapshot: Snapshot, target: RecoveryTarget) -> int:
    """The timeline recovery will follow: as PostgreSQL resolves 'latest', by probing
    history files upwards from the backup's timeline."""
    base = PhysicalFacts.of(snapshot).timeline
    if target.timeline == "current":
        return base
    if target.timeline.isdigit():
        return int(target.timeline)
    names = set(archive.names())
    timeline = base
    while history_name(timeline + 1) in names:
        timeline += 1
    return timeline


def check_wal_chain(repo: Repository, snapshot: Snapshot, target: RecoveryTarget) -> WalRange:
    """Every WAL file recovery needs is archived: from the backup's start on its timeline,
    across timeline switches, to the target LSN (or to the newest archived WAL, since a time,
    xid or name cannot be placed in WAL without reading it), and at least to the backup's
    own stop LSN. WalMissing names the gap."""
    from medvault.repository.wal import WalArchive

    facts = PhysicalFacts.of(snapshot)
    size = facts.wal_segment_size
    archive = WalArchive(repo, snapshot.source)
    # Recovery fetches through the secondary where the primary lacks a file, so the chain is
    # judged on what either holds.
    archive.with_secondary = True
    base = facts.timeline
    start = facts.start_lsn
    stop = facts.stop_lsn
    final = _target_timeline(archive, snapshot, target)
    periods, lacking = timeline_periods(archive, final)
    if lacking:
        raise _missing(snapshot, lacking)
    own = next((p for p in periods if p.timeline == base), None)
    if own is None:
        raise RecoveryFailed(
            f"timeline {final} does not descend from timeline {base} of backup "
            f"{snapshot.short_id}; recover with --target-timeline current, or use a backup "
            f"taken on timeline {final}"
        )
    if own.end is not None and own.end < stop:
        raise RecoveryFailed(
            f"timeline {base} branched off to a later timeline at {format_lsn(own.end)}, "
            f"before backup {snapshot.short_id} became consistent ({format_lsn(stop)}); "
            "recover with --target-timeline current, or use a newer backup"
        )
    if target.kind == "lsn":
        end: int | None = parse_lsn(target.value) + 1  # the segment holding the target itself
    elif target.kind == "immediate":
        end = stop
    else:
        end = None
    missing = missing_segments(archive, final, start, end, size)
    missing += missing_segments(archive, final, start, stop, size)
    if missing:
        raise _missing(snapshot, sorted(set(missing)))
    last = _last_segment(archive, periods, start, end, size)
    if target.kind == "time":
        reach = archive_reach(archive, periods, stop, last)
        _check_time_reached(archive, snapshot, target, reach, last)
    return WalRange(final, facts.start_wal, last)


@dataclass(frozen=True)
class ArchiveReach:
    """The newest moment a time target can reach: the last commit or abort in the archived
    WAL after a backup became consistent (None: there is none), found in `segment`.
    `known` is False when the search gave up (too many segments without one, or a segment
    missing), and then nothing can be said."""

    newest: TransactionEnd | None
    segment: str | None
    known: bool


def archive_reach(
    archive: WalArchive, periods: list[Period], consistent_lsn: int, last: str
) -> ArchiveReach:
    """Read the WAL backwards from `last` along the timeline chain, one segment at a time
    (decrypted in memory), until a segment holds a transaction's end after
    `consistent_lsn`. Usually the newest segment does."""
    from medvault.postgres.walrecords import transaction_ends

    cluster = archive.cluster()
    if cluster is None:
        return ArchiveReach(None, None, known=False)
    size = cluster.segment_size
    newest = segment_number(last, size)
    lowest = consistent_lsn // size
    following: bytes | None = None
    for number in range(newest, max(lowest, newest - REACH_SEARCH_SEGMENTS + 1) - 1, -1):
        period = period_of(periods, number, size)
        name = str(segment_name(period.timeline, number * size, size))
        data = archive.fetch(name)
        if data is None:
            return ArchiveReach(None, None, known=False)
        ends = [
            end
            for end in transaction_ends(data, number * size, following)
            if end.lsn >= consistent_lsn
        ]
        if ends:
            # Commit stamps are taken just before the record is written: nearly, not
            # strictly, in WAL order.
            return ArchiveReach(max(ends, key=lambda e: e.time), name, known=True)
        following = data
    return ArchiveReach(None, None, known=newest - lowest < REACH_SEARCH_SEGMENTS)


def _check_time_reached(
    archive: WalArchive,
    snapshot: Snapshot,
    target: RecoveryTarget,
    reach: ArchiveReach,
    last: str,
) -> None:
    """Recovery to a time stops before the first commit or abort stamped later than the
    target; without one it fails after replaying everything. Refuse such a target now,
    before anything is written, naming the newest moment the archive reaches."""
    if not reach.known:
        _check_time_archived(archive, snapshot, target, last)
        return
    if reach.newest is not None and target.moment < reach.newest.time:
        return
    newer_wal = (
        "if the server has committed since, archive its WAL first (`SELECT pg_switch_wal()` "
        "there) and retry"
    )
    if reach.newest is None:
        raise WalMissing(
            f"target time {target.value} cannot be reached: the archived WAL of "
            f"{snapshot.source} holds no transaction committed after backup "
            f"{snapshot.short_id} became consistent ({PhysicalFacts.of(snapshot).stop_time}); "
            f"nothing was restored. Recover with --recovery-target latest, or {newer_wal}"
        )
    when = reach.newest.time.isoformat(sep=" ")
    raise WalMissing(
        f"target time {target.value} is not before the newest moment the archived WAL of "
        f"{snapshot.source} reaches, {when} (its last transaction, in {reach.segment}); "
        "nothing was restored. Give an earlier --target-time, or recover everything archived "
        f"with --recovery-target latest; {newer_wal}"
    )


def _check_time_archived(
    archive: WalArchive, snapshot: Snapshot, target: RecoveryTarget, last: str
) -> None:
    """Recovery to a time stops at the first commit after it, so the archive must hold WAL
    written after that time. Every record in a segment was written before the segment was
    archived: a target later than the newest segment's arrival (plus a margin for clock skew
    between the server and the store) can never be reached."""
    stored = archive.archived_at(last)
    if stored is None:
        return
    arrived = datetime.fromtimestamp(stored, UTC)
    if target.moment <= arrived + timedelta(seconds=CLOCK_SKEW_MARGIN_S):
        return
    raise WalMissing(
        f"target time {target.value} is after the newest archived WAL of {snapshot.source} "
        f"({last}, archived {arrived.isoformat(sep=' ', timespec='seconds')}); nothing was "
        "restored. The WAL up to that time is still on the server: archive it with "
        "`SELECT pg_switch_wal()` (or set archive_timeout) and retry, or recover with "
        "--recovery-target latest"
    )


def _last_segment(
    archive: WalArchive, periods: list[Period], start: int, end: int | None, size: int
) -> str:
    """The last segment recovery reads: the one holding the target LSN, else the newest
    archived one along the timeline chain."""
    if end is not None:
        # A switch point's segment is read from the newer timeline (it copies the start).
        number = max(start, end - 1) // size
        where = period_of(periods, number, size)
        return str(segment_name(where.timeline, number * size, size))
    best: tuple[int, str] | None = None
    for period in periods:
        low, high = period_segments(period, size)
        low = max(low, start // size)
        for name in archive.names(period.timeline):
            if not SEGMENT.match(name):
                continue
            number = segment_number(name, size)
            if number >= low and (high is None or number <= high):
                best = max(best or (number, name), (number, name))
    return best[1] if best else str(segment_name(periods[0].timeline, start, size))


def _missing(snapshot: Snapshot, missing: list[str]) -> WalMissing:
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return WalMissing(
        f"the WAL archive of {snapshot.source} lacks {shown}, needed to recover backup "
        f"{snapshot.short_id} to the target; nothing was restored. Push it from the server's "
        "pg_wal if it is still there, or choose an earlier target or a newer backup"
    )


# -- the target directory ---------------------------------------------------------------


def _entries(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise RestoreTargetError(f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise RestoreTargetError(f"cannot read {path}: {exc.strerror}") from None


def check_port_free(port: int) -> None:
    """Refuse a port something listens on (checked before anything is restored)."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port")
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        with sock:
            # As PostgreSQL does: TIME_WAIT leftovers do not count, a listener does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError:
                if family == socket.AF_INET6:
                    continue
                raise RestoreTargetError(
                    f"port {port} is in use; choose a free one with --port"
                ) from None
            if family == socket.AF_INET6:
                return
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        raise RestoreTargetError(f"port {port} is in use; choose a free one with --port")


def check_data_directory(pgdata: str, snapshot: Snapshot, *, delta: bool, force: bool) -> None:
    """Refuse a non-empty directory unless --delta (same cluster, stopped) or --force
    (stopped); never touch a running server's directory."""
    if not _entries(pgdata):
        return
    pid = running_postmaster(pgdata)
    if pid is not None:
        raise RestoreTargetError(
            f"{pgdata} belongs to a running PostgreSQL server (pid {pid}); stop it first, "
            "or restore into another directory"
        )
    if force:
        return
    if not delta:
        raise RestoreTargetError(
            f"{pgdata} is not empty; restore into an empty directory, or pass --delta to "
            "rewrite only what differs (same cluster) or --force to empty it first"
        )
    found = read_system_identifier(pgdata)
    wanted = PhysicalFacts.of(snapshot).system_identifier
    if found is None and not os.path.exists(os.path.join(pgdata, "PG_VERSION")):
        raise RestoreTargetError(
            f"{pgdata} does not look like a PostgreSQL data directory, so --delta cannot reuse "
            "it; pass --force to empty it, or choose another directory"
        )
    if found is not None and found != wanted:
        raise RestoreTargetError(
            f"{pgdata} holds another cluster (system identifier {found}, the backup is of "
            f"{wanted}); --delta only reuses a copy of the same cluster: pass --force to "
            "empty it, or choose another directory"
        )


def _empty_directory(path: str) -> None:
    from medvault.dirpath import remove_tree

    names = _entries(path)
    if not names:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreTargetError(f"cannot read {path}: {exc.strerror}") from None
    try:
        for name in names:
            # Through directory descriptors: a tree of any depth (shutil.rmtree recurses).
            problems = remove_tree(fd, os.fsencode(name), os.fsencode(path))
            if problems:
                raise RestoreTargetError(f"cannot remove {problems[0]}")
    finally:
        os.close(fd)


def tablespace_locations(snapshot: Snapshot, remap: dict[str, str]) -> dict[str, str]:
    """oid -> directory to restore each tablespace into."""
    spaces = dict(PhysicalFacts.of(snapshot).tablespaces)
    for oid in remap:
        if oid not in spaces:
            known = ", ".join(sorted(spaces)) or "none"
            raise UsageError(
                f"--tablespace {oid}=...: the backup has no tablespace {oid} (it has: {known})"
            )
    out = {}
    for oid, location in spaces.items():
        target = os.path.abspath(remap.get(oid, location))
        if not os.path.isabs(remap.get(oid, location)):
            raise UsageError(f"--tablespace {oid}: give an absolute directory")
        out[oid] = target
    return out


def parse_tablespace_options(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        oid, sep, directory = item.partition("=")
        if not sep or not oid.isdigit() or not directory:
            raise UsageError(f"--tablespace {item!r}: expected OID=DIR")
        out[oid] = directory
    return out


def check_tablespaces(
    snapshot: Snapshot, locations: dict[str, str], pgdata: str, *, delta: bool, force: bool
) -> None:
    facts = PhysicalFacts.of(snapshot)
    original = dict(facts.tablespaces)
    source_pgdata = facts.pgdata or (snapshot.paths or ("",))[0]
    production_up = bool(source_pgdata) and running_postmaster(source_pgdata) is not None
    for oid, location in locations.items():
        if os.path.realpath(location).startswith(os.path.realpath(pgdata) + os.sep):
            raise UsageError(f"tablespace {oid}: {location} is inside the data directory")
        if not _entries(location):
            continue
        if (
            production_up
            and location == original.get(oid)
            and os.path.realpath(pgdata) != os.path.realpath(source_pgdata)
        ):
            raise RestoreTargetError(
                f"tablespace {oid} would be restored into {location}, which the running "
                f"server of {source_pgdata} uses; move it with --tablespace {oid}=DIR"
            )
        if not (delta or force):
            raise RestoreTargetError(
                f"tablespace {oid} location {location} is not empty; move it with "
                f"--tablespace {oid}=DIR, or pass --delta or --force"
            )


# -- recovery settings ------------------------------------------------------------------


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def recovery_block(
    snapshot: Snapshot,
    target: RecoveryTarget,
    restore_command: str,
    *,
    port: int | None,
    keep_archiving: bool,
) -> list[str]:
    settings: dict[str, str] = {"restore_command": restore_command, **target.settings()}
    if not keep_archiving:
        # postgresql.conf still holds production's archive_command: a restored copy must not
        # push its WAL into the production archive unless asked (--archive).
        settings["archive_mode"] = "off"
    written = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [BLOCK_BEGIN, f"# restored from snapshot {snapshot.id} at {written}"]
    lines += [f"{key} = {_quote(value)}" for key, value in settings.items()]
    if port is not None:
        lines.append(f"port = {port}")
    lines.append(BLOCK_END)
    return lines


def write_auto_conf(pgdata: str, block: list[str]) -> None:
    """Replace any earlier medvault block; later lines win in postgresql.auto.conf."""
    path = os.path.join(pgdata, "postgresql.auto.conf")
    try:
        with open(path) as handle:
            existing = handle.read().splitlines()
    except FileNotFoundError:
        existing = [
            "# Do not edit this file manually!",
            "# It will be overwritten by ALTER SYSTEM.",
        ]
    kept: list[str] = []
    inside = False
    for line in existing:
        if line == BLOCK_BEGIN:
            inside = True
        elif line == BLOCK_END:
            inside = False
        elif not inside:
            kept.append(line)
    write_private_file(path, "\n".join([*kept, *block]) + "\n")


def write_private_file(path: str, text: str, mode: int = 0o600) -> None:
    """Written whole (temporary name, fsync, rename): a reader never sees part of it."""
    temp = path + ".medvault-tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def rewrite_tablespace_map(text: str, locations: dict[str, str]) -> str:
    """tablespace_map lines are `OID PATH`: point each at its restored location."""
    out = []
    for line in text.splitlines():
        oid, _, _path = line.partition(" ")
        out.append(f"{oid} {locations[oid]}" if oid in locations else line)
    return "\n".join(out) + ("\n" if out else "")


# -- restore ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhysicalRestoreOptions:
    pgdata: str
    target: RecoveryTarget
    restore_command: str
    standby: bool = False
    port: int | None = None
    delta: bool = False
    force: bool = False
    keep_archiving: bool = False
    tablespaces: dict[str, str] = field(default_factory=dict)  # oid -> new location
    start: bool = False
    pg_bin: str | None = None
    wait_timeout: float = WAIT_TIMEOUT_S
    # What the started server needs beyond a minimal environment: its restore_command's
    # credentials for the store (childenv.store_access), never a passphrase.
    server_environment: dict[str, str] = field(default_factory=dict)


@dataclass
class Reached:
    state: str  # promoted, paused, shut down, standby
    lsn: str | None = None
    time: str | None = None
    timeline: int | None = None
    port: int | None = None
    log: str = ""
    stop_reason: str | None = None


@dataclass
class PhysicalRestoreResult:
    snapshot: str
    pgdata: str
    files: RestoreResult
    tablespaces: dict[str, str]
    wal: WalRange
    settings: list[str]
    signal: str
    reached: Reached | None = None


def _add(total: RestoreResult, part: RestoreResult) -> None:
    total.files += part.files
    total.files_unchanged += part.files_unchanged
    total.removed += part.removed
    total.dirs += part.dirs
    total.symlinks += part.symlinks
    total.bytes_written += part.bytes_written
    total.skipped += part.skipped


def restore_physical(
    repo: Repository,
    snapshot: Snapshot,
    options: PhysicalRestoreOptions,
    on_progress: Callable[[int], None] | None = None,
) -> PhysicalRestoreResult:
    if snapshot.kind != KIND_PHYSICAL:
        raise RestoreTargetError(
            f"snapshot {snapshot.short_id} is a {snapshot.kind} snapshot, not a physical backup"
        )
    facts = PhysicalFacts.of(snapshot)
    if not facts.backup_label:
        raise RecoveryFailed(
            f"snapshot {snapshot.short_id} lacks its backup label; it is incomplete"
        )
    started = time.monotonic()
    pgdata = os.path.abspath(options.pgdata)
    target = options.target
    pg_ctl = None
    if options.start:
        if os.geteuid() == 0:
            raise UsageError(
                "refusing to start PostgreSQL as root; run medvault as the user owning the data "
                "directory (usually postgres), e.g. `runuser -u postgres -- medvault ...`"
            )
        if options.port is None:
            raise UsageError("--start needs --port P: the port the restored server listens on")
        from medvault.postgres.programs import find_program

        pg_ctl = find_program("pg_ctl", options.pg_bin, facts.major)
    if options.port is not None:
        check_port_free(options.port)
    check_target_reachable(snapshot, target)
    check_data_directory(pgdata, snapshot, delta=options.delta, force=options.force)
    locations = tablespace_locations(snapshot, options.tablespaces)
    check_tablespaces(snapshot, locations, pgdata, delta=options.delta, force=options.force)
    wal = check_wal_chain(repo, snapshot, target)

    # Checks done: from here on, files are written. pg_control comes last: until it is there
    # the directory cannot be started by mistake, which is why the other files may be
    # written in place rather than under temporary names.
    if options.force:
        _empty_directory(pgdata)
        for location in locations.values():
            _empty_directory(location)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(pgdata, PG_CONTROL))
    total = RestoreResult()

    def restore_tree(target_dir: str, root: str, **how: Any) -> None:
        part = restore_files(
            repo,
            snapshot,
            target_dir,
            root=root,
            kinds=(KIND_PHYSICAL,),
            on_progress=on_progress,
            **how,
        )
        _add(total, part)

    restore_tree(pgdata, "pgdata", delta=options.delta, atomic=False, hold_back=(PG_CONTROL,))
    for oid, location in locations.items():
        restore_tree(location, f"tablespaces/{oid}", delta=options.delta, atomic=False)
    block = recovery_block(
        snapshot,
        target,
        options.restore_command,
        port=options.port,
        keep_archiving=options.keep_archiving,
    )
    signal = _prepare_for_recovery(pgdata, snapshot, locations, block, options.standby)
    restore_tree(pgdata, "pgdata", includes=(PG_CONTROL,), overwrite=True)
    total.duration = time.monotonic() - started
    result = PhysicalRestoreResult(snapshot.id, pgdata, total, locations, wal, block, signal)
    if options.start:
        assert pg_ctl is not None and options.port is not None
        result.reached = start_and_wait(
            pgdata,
            pg_ctl,
            options.port,
            "standby"
            if options.standby
            else target.action
            if target.kind != "latest"
            else "promote",
            options.wait_timeout,
            access=ServerAccess(carries=options.server_environment),
        )
    return result


def _prepare_for_recovery(
    pgdata: str,
    snapshot: Snapshot,
    locations: dict[str, str],
    block: list[str],
    standby: bool,
) -> str:
    facts = PhysicalFacts.of(snapshot)
    for sub in ("pg_wal", os.path.join("pg_wal", "archive_status"), "pg_tblspc"):
        os.makedirs(os.path.join(pgdata, sub), mode=0o700, exist_ok=True)
    write_private_file(os.path.join(pgdata, "backup_label"), facts.backup_label)
    spcmap = facts.tablespace_map
    if spcmap:
        write_private_file(
            os.path.join(pgdata, "tablespace_map"), rewrite_tablespace_map(spcmap, locations)
        )
    for oid, location in locations.items():
        link = os.path.join(pgdata, "pg_tblspc", oid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(location, link)
    write_auto_conf(pgdata, block)
    for name in ("recovery.signal", "standby.signal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(pgdata, name))
    signal = "standby.signal" if standby else "recovery.signal"
    write_private_file(os.path.join(pgdata, signal), "")
    os.chmod(pgdata, 0o700)
    if os.geteuid() == 0:
        # As root the restored files keep their recorded owners (the original postgres
        # user); what this function and the restore's top directories made follows them.
        st = os.stat(os.path.join(pgdata, "PG_VERSION"))
        made = [
            "backup_label",
            "tablespace_map",
            "postgresql.auto.conf",
            signal,
            "pg_wal",
            os.path.join("pg_wal", "archive_status"),
            "pg_tblspc",
            *(os.path.join("pg_tblspc", oid) for oid in locations),
        ]
        for path in [pgdata, *locations.values(), *(os.path.join(pgdata, n) for n in made)]:
            with contextlib.suppress(FileNotFoundError):
                os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    return signal


# -- start and wait ---------------------------------------------------------------------


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as handle:
            text = handle.read()[-20000:]
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ServerAccess:
    """How to reach and run a restored server: TCP on 127.0.0.1 by default, or a private
    socket directory (drills); `run_as` names the OS user pg_ctl runs as when medvault is
    root (PostgreSQL refuses root); `users` the roles to log in as, tried in order (the
    first that exists is kept: a restored cluster's roles are production's, not ours);
    `carries` the values the server needs beyond a minimal environment (childenv.py)."""

    host: str = "127.0.0.1"
    users: tuple[str, ...] = ()
    run_as: str | None = None
    carries: dict[str, str] = field(default_factory=dict)

    def connect(self, port: int, dbname: str = "postgres", timeout: int = 3) -> Any:
        import psycopg

        candidates: tuple[str | None, ...] = self.users or (None,)
        for number, user in enumerate(candidates):
            try:
                conn = psycopg.connect(
                    host=self.host,
                    port=port,
                    dbname=dbname,
                    user=user,
                    autocommit=True,
                    connect_timeout=timeout,
                    application_name="medvault-recovery",
                )
            except psycopg.OperationalError as exc:
                missing_role = f'role "{user}" does not exist' in str(exc)
                if not missing_role or number == len(candidates) - 1:
                    raise
                continue
            if user is not None and number:
                self.users = (user, *(u for u in self.users if u != user))
            return conn
        raise AssertionError("unreachable")

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """A PostgreSQL program, as `run_as` when set, in the server's environment: this
        process's locale (a server recovered with --start may go on serving and keeps the
        locale it was given), none of its secrets."""
        identity: dict[str, Any] = {}
        if self.run_as is not None:
            import pwd

            account = pwd.getpwnam(self.run_as)
            identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=timeout,
            env=childenv.for_server(self.run_as, self.carries),
            **identity,
        )


_STOP = re.compile(r"LOG:\s+(recovery stopping [^\n]*)")
_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
_LAST_XACT = re.compile(r"last completed transaction was at log time ([^\n]+)")
_TIMELINE = re.compile(r"selected new timeline ID: (\d+)")


def _from_log(text: str, reached: Reached) -> None:
    if m := _STOP.findall(text):
        reached.stop_reason = m[-1].strip()
    if reached.lsn is None and (m := _REDO_DONE.findall(text)):
        reached.lsn = m[-1]
    if reached.time is None and (m := _LAST_XACT.findall(text)):
        reached.time = m[-1].strip()
    if reached.timeline is None and (m := _TIMELINE.findall(text)):
        reached.timeline = int(m[-1])


def _from_control_data(pgdata: str, pg_ctl: str, reached: Reached) -> None:
    """A server shut down at its target: where it stopped, from pg_control."""
    fields = read_control_data(pgdata, os.path.dirname(pg_ctl))
    if fields is None:
        return
    reached.lsn = fields.get("Minimum recovery ending location") or reached.lsn
    tli = fields.get("Min recovery ending loc's timeline", "")
    reached.timeline = int(tli) if tli.isdigit() else reached.timeline
    if reached.time is None and reached.stop_reason and ", time " in reached.stop_reason:
        reached.time = reached.stop_reason.rsplit(", time ", 1)[1]


def _read_log(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def start_and_wait(
    pgdata: str,
    pg_ctl: str,
    port: int,
    action: str,
    timeout: float = WAIT_TIMEOUT_S,
    access: ServerAccess | None = None,
    failed: Callable[[], str | None] | None = None,
) -> Reached:
    """Start the restored server and wait until recovery is over the way `action` says:
    promote (out of recovery), pause (replay paused at the target), shutdown (the server
    stopped at the target), standby (consistent and accepting read-only connections).
    `failed` may report a reason to give up (e.g. WAL that could not be supplied)."""
    import psycopg

    access = access or ServerAccess()
    log = os.path.join(pgdata, "log", LOG_NAME)
    if not os.path.isdir(os.path.dirname(log)):
        os.makedirs(os.path.dirname(log), mode=0o700)
        st = os.stat(pgdata)
        if os.geteuid() == 0:
            os.chown(os.path.dirname(log), st.st_uid, st.st_gid)
    done = access.run([pg_ctl, "-D", pgdata, "-l", log, "-W", "-s", "start"], timeout=120)
    if done.returncode != 0:
        raise RecoveryFailed(
            f"pg_ctl could not start the restored server in {pgdata}: "
            f"{(done.stderr or done.stdout).strip()}\n{log_tail(log)}"
        )
    began = time.monotonic()
    seen_pid = False
    # Short replays (a drill to the end of its backup) finish within a few hundred ms: poll
    # often at first, then back off so an hour-long replay is not probed 20 times a second.
    pause = POLL_FIRST_S
    while True:
        text = _read_log(log)
        if NOT_REACHED in text:
            last = _LAST_XACT.findall(text)
            newest = f"; the newest archived commit is at {last[-1].strip()}" if last else ""
            raise RecoveryFailed(
                "the restored server replayed all archived WAL without reaching the recovery "
                "target (a time with no later commit in the archive, an xid that never "
                f"committed, or a restore point that does not exist){newest}; server log:\n"
                f"{log_tail(log)}"
            )
        reason = failed() if failed is not None else None
        if reason is not None:
            raise RecoveryFailed(reason)
        pid = running_postmaster(pgdata)
        seen_pid = seen_pid or pid is not None
        if pid is None and (seen_pid or time.monotonic() - began > 30):
            reached = Reached("shut down", port=port, log=log)
            _from_log(text, reached)
            if action == "shutdown" and reached.stop_reason is not None:
                _from_control_data(pgdata, pg_ctl, reached)
                return reached
            raise RecoveryFailed(
                f"the restored server stopped during recovery; server log:\n{log_tail(log)}"
            )
        if pid is not None:
            try:
                with access.connect(port) as conn:
                    found = _probe(conn, action, port, log)
            except psycopg.OperationalError:
                found = None  # starting up, or not yet consistent
            if found is not None:
                _from_log(_read_log(log), found)
                return found
        if time.monotonic() - began > timeout:
            raise RecoveryFailed(
                f"recovery did not finish within {timeout:.0f} s; the server is still running "
                f"(stop it with pg_ctl -D {pgdata} stop); server log:\n{log_tail(log)}"
            )
        time.sleep(pause)
        pause = min(pause * 1.5, POLL_MAX_S)


def _probe(conn: Any, action: str, port: int, log: str) -> Reached | None:
    row = conn.execute(
        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,"
        " pg_last_xact_replay_timestamp(),"
        " (SELECT timeline_id FROM pg_control_checkpoint())"
    ).fetchone()
    in_recovery, replay_lsn, replay_time, checkpoint_tli = row
    when = replay_time.astimezone(UTC).isoformat() if replay_time is not None else None
    if action in ("promote", "shutdown") and not in_recovery:
        current = conn.execute(
            "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())"
        ).fetchone()
        return Reached(
            "promoted",
            replay_lsn or current[0],
            when,
            segment_timeline(current[1]),
            port,
            log,
        )
    if action == "pause" and in_recovery:
        state = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0]
        if state == "paused":
            return Reached("paused", replay_lsn, when, int(checkpoint_tli), port, log)
    if action == "standby" and in_recovery:
        return Reached("standby", replay_lsn, when, int(checkpoint_tli), port, log)
    return None


# -- restore points ---------------------------------------------------------------------


@dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: str
    wal: str
    time: str


def create_restore_point(dsn: str, name: str, what: str = "PostgreSQL") -> RestorePoint:
    """pg_create_restore_point, then a WAL switch so the point reaches the archive now
    rather than when the segment fills."""
    import psycopg

    from medvault.postgres.server import connect

    if not name or len(name.encode()) > _RESTORE_POINT_MAX:
        raise UsageError("a restore point name is 1 to 63 bytes long")
    with connect(dsn, what=what) as conn:
        try:
            row = conn.execute(
                "SELECT lsn::text, pg_walfile_name(lsn), clock_timestamp()"
                " FROM pg_create_restore_point(%s) AS lsn",
                (name,),
            ).fetchone()
            conn.execute("SELECT pg_switch_wal()")
        except psycopg.Error as exc:
            reason = first_line(exc)
            raise SourceUnavailable(f"cannot create restore point {name!r}: {reason}") from None
    assert row is not None
    return RestorePoint(name, str(row[0]), str(row[1]), row[2].astimezone(UTC).isoformat())


__all__ = [
    "PhysicalRestoreOptions",
    "PhysicalRestoreResult",
    "Reached",
    "RecoveryTarget",
    "RestorePoint",
    "check_data_directory",
    "check_port_free",
    "check_wal_chain",
    "choose_base_backup",
    "create_restore_point",
    "make_target",
    "restore_physical",
]
