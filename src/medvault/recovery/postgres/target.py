"""The recovery target: what the command line asks for (time, LSN, xid, restore point,
immediate, latest; the action there and the timeline), checked into one RecoveryTarget, and
whether a given backup can reach it at all."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from medvault.errors import UsageError
from medvault.postgres.facts import PhysicalFacts
from medvault.postgres.lsn import format_lsn, is_lsn, parse_lsn

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot


TARGET_KINDS = ("latest", "immediate", "time", "lsn", "xid", "name")
TARGET_ACTIONS = ("promote", "pause", "shutdown")
RESTORE_POINT_MAX = 63  # MAXFNAMELEN - 1 in PostgreSQL


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
    elif kind == "name" and (not value or len(value.encode()) > RESTORE_POINT_MAX):
        raise UsageError("--target-name must be 1 to 63 bytes long")
    return RecoveryTarget(kind, value, action, timeline)


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
