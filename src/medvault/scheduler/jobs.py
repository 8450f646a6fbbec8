"""A scheduled job: what runs (kind, source, repository) and when (schedule, zone)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medvault.scheduler.spec import DrillPick, Schedule

BACKUP_KINDS = ("full", "incremental", "differential", "logical")
KINDS = (*BACKUP_KINDS, "check", "drill", "prune", "copy")
# When several jobs of one repository are due together: backups first (the newest data is
# protected first, and retention then counts the new snapshot), then copy (the second site
# gets it before anything could be forgotten), check (verifies what was just written), drill
# (restores the newest), prune last (it forgets by policy and deletes what no snapshot needs,
# so it never runs ahead of a backup or copy that would still want it).
PRIORITY = {
    "full": 0,
    "incremental": 0,
    "differential": 0,
    "logical": 0,
    "copy": 1,
    "check": 2,
    "drill": 3,
    "prune": 4,
}


@dataclass(frozen=True)
class Job:
    """One scheduled job. `name` is stable across restarts ("emr/full",
    "repository/main/check"): the state file and the logs are keyed by it."""

    name: str
    kind: str  # one of KINDS
    schedule: str  # a cron expression or "every N[s|m|h|d]", as written
    repository: str  # the [repository.NAME] it works on (or a path/URL)
    source: str | None = None  # None: a repository-wide job
    timezone: str = "UTC"
    catch_up: bool = True
    drill_pick: str = "latest"  # drills: "latest" or "random:30d"
    secondary: str | None = None  # copy: the repository it copies to

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: unknown job kind {self.kind!r}")
        self.parsed  # noqa: B018 -- a bad schedule fails here, not when it first fires

    @property
    def operation(self) -> str:
        """The run name its record carries (RunRecord.operation)."""
        return "backup" if self.kind in BACKUP_KINDS else self.kind

    @property
    def priority(self) -> int:
        return PRIORITY[self.kind]

    @property
    def repositories(self) -> tuple[str, ...]:
        """Every repository it touches: one at a time per repository."""
        return (self.repository, self.secondary) if self.secondary else (self.repository,)

    @cached_property
    def parsed(self) -> Schedule:
        from medvault.scheduler.spec import parse_schedule, parse_zone

        return parse_schedule(self.schedule, parse_zone(self.timezone))

    @cached_property
    def pick(self) -> DrillPick:
        from medvault.scheduler.spec import parse_drill_pick

        return parse_drill_pick(self.drill_pick)
