"""`prune`: condemn what no snapshot needs, delete it once no backup that might still depend
on it is running (repository/prune.py says why that is safe beside backups); and remove the
WAL no retained backup or PITR window needs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from medvault.errors import UsageError

if TYPE_CHECKING:
    from medvault.service.session import Session


@dataclass(frozen=True)
class PruneOptions:
    dry_run: bool = False  # report; change nothing
    repack_threshold: float = 0.5  # rewrite packs at least this unused (0-1; 1 never repacks)
    young: str = "1h"  # leave packs (and WAL) younger than this alone
    wal: bool = True  # also remove WAL no retained backup or PITR window needs


@dataclass(frozen=True)
class PackPrune:
    """What prune did (or would do, dry) to packs; the fields of repository/prune.py's
    PruneResult, in its order (the --json document keeps it)."""

    condemned_packs: int
    condemned_bytes: int
    repacked_packs: int
    repacked_bytes: int  # used bytes written again
    deleted_packs: int
    freed_bytes: int
    deleted_indexes: int
    kept_locked: int  # locked against deletion (Object Lock)
    kept_young: int
    reprieved: int  # condemned packs a snapshot came to need again
    waiting: tuple[str, ...]  # records held back by live locks


@dataclass(frozen=True)
class WalPrune:
    deleted: int
    freed_bytes: int
    kept_locked: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class PruneResult:
    packs: PackPrune
    wal: WalPrune | None  # None when WAL was not pruned
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        """The CLI's --json document (and the run's details)."""
        return _plain(asdict(self.packs)) | {
            "dry_run": self.dry_run,
            "wal": _plain(asdict(self.wal)) if self.wal is not None else None,
        }


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: list(v) if isinstance(v, tuple) else v for name, v in fields.items()}


def prune(
    session: Session,
    options: PruneOptions,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> PruneResult:
    from medvault.durations import parse_duration
    from medvault.repository.prune import Pruner

    with session.run("prune") as run:
        if not 0 < options.repack_threshold <= 1:
            raise UsageError("--repack-threshold must be above 0 and at most 1")
        try:
            margin = parse_duration(options.young)
        except ValueError as exc:
            raise UsageError(f"--young: {exc}") from None
        repo = session.open()
        run.repository = repo.url
        with repo.lock(exclusive=False, scope="prune", purpose="prune") as lock:
            packs = Pruner(
                repo,
                lock,
                dry_run=options.dry_run,
                repack_unused=options.repack_threshold,
                young=margin,
                on_progress=on_progress,
            ).run()
            wal = None
            if options.wal:
                from medvault.sources.postgres.walretention import prune_wal

                wal = prune_wal(repo, pitr_windows(session), young=margin, dry_run=options.dry_run)
        result = PruneResult(
            PackPrune(**asdict(packs) | {"waiting": tuple(packs.waiting)}),
            WalPrune(**asdict(wal) | {"notes": tuple(wal.notes)}) if wal is not None else None,
            options.dry_run,
        )
        run.details.update(result.as_dict())
        return result


def pitr_windows(session: Session) -> dict[str, dt.timedelta]:
    """Each PostgreSQL source's `pitr_window` from medvault.toml: how long its WAL stays
    for point-in-time recovery (what every prune, by hand or scheduled, keeps)."""
    from medvault.config import PostgresSourceSettings
    from medvault.durations import parse_duration

    if not session.configured_sources():
        return {}
    return {
        name: parse_duration(section.pitr_window)
        for name, section in session.settings.source.items()
        if isinstance(section, PostgresSourceSettings) and section.pitr_window
    }
