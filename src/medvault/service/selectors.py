"""Which snapshot a selector names, for every operation that takes one.

The repository answers ids, id prefixes, `latest` and `latest:SOURCE` itself. Two selectors
need more than the snapshots, so they are answered here:

- `verified`, `verified:SOURCE`: the newest snapshot whose last drill passed (the drill
  records are in the repository, verification/drills.py). A snapshot whose newest drill
  failed is not verified, whatever older drills said.
- `random:30d`, `random:30d:SOURCE` (any duration): one snapshot drawn at random from those
  taken within the span, the draw a procedure's "restore any backup of the last month"
  asks for. The scheduler's `drill_pick = "random:30d"` draws through `random_pick` too.
  The seed, the window and the number of candidates go into the run's details: the
  snapshots taken in [since, until] of the source, in (time, id) order, and the seed give
  the same pick again.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import TYPE_CHECKING, Any

from medvault.errors import SnapshotNotFound, UsageError

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.service.runs import Run

VERIFIED = "verified"
RANDOM = "random"


def find_snapshot(
    repo: Repository, selector: str, run: Run | None = None, *, allow_random: bool = True
) -> Snapshot:
    """The snapshot `selector` names: an id or unique prefix, latest[:SOURCE],
    verified[:SOURCE] or random:SPAN[:SOURCE]. What a verified or random pick rests on goes
    into `run`'s details. `allow_random`: False where a random choice makes no sense
    (forget)."""
    kind, _, rest = selector.partition(":")
    if kind == VERIFIED:
        snap, why = newest_verified(repo, rest or None)
        if run is not None:
            run.details["verified_by"] = why
        return snap
    if kind == RANDOM:
        if not allow_random:
            raise UsageError(f"{selector!r}: a random pick is for restores and checks only")
        span, _, source = rest.partition(":")
        try:
            from medvault.scheduler.spec import parse_drill_pick

            within = parse_drill_pick(f"random:{span}").within
        except ValueError:
            within = None
        if within is None:
            raise UsageError(
                f"{selector!r} is not a random pick: write random:SPAN or random:SPAN:SOURCE "
                "(e.g. random:30d:emr)"
            )
        snap, pick = random_pick(repo, within, source or None)
        if run is not None:
            run.details["pick"] = pick
        return snap
    return repo.find_snapshot(selector)


def newest_verified(repo: Repository, source: str | None) -> tuple[Snapshot, dict[str, Any]]:
    """The newest snapshot (of `source`) whose last drill passed, and that drill."""
    from medvault.verification.drills import list_results

    last: dict[str, Any] = {}
    for result in list_results(repo):  # oldest first: the last one of a snapshot wins
        last[result.snapshot] = result
    passed = {snapshot for snapshot, result in last.items() if result.ok}
    candidates = [
        s
        for s in repo.list_snapshots()
        if s.id in passed and (source is None or s.source == source)
    ]
    where = f" of source {source}" if source else ""
    if not candidates:
        raise SnapshotNotFound(
            f"no snapshot{where} has passed its last drill; run `medvault drill` first"
        )
    snap = repo.newest(candidates)
    if snap is None:
        raise SnapshotNotFound(f"every verified snapshot{where} is dated in the future")
    drill = last[snap.id]
    return snap, {"drill": drill.id, "drilled": drill.started}


def random_pick(
    repo: Repository,
    within: dt.timedelta,
    source: str | None,
    seed: str | None = None,
    now: dt.datetime | None = None,
) -> tuple[Snapshot, dict[str, Any]]:
    """A snapshot (of `source`) taken within `within` before `now`, drawn with `seed`
    (default: a fresh one), and what the draw rests on, for the run's record. The same
    snapshots, window and seed give the same pick: candidates in (time, id) order."""
    import random

    until = now or dt.datetime.now(dt.UTC)
    since = until - within
    candidates = sorted(
        (
            s
            for s in repo.list_snapshots()
            if (source is None or s.source == source) and since <= s.taken <= until
        ),
        key=lambda s: (s.taken, s.id),
    )
    if not candidates:
        where = f" of {source}" if source else ""
        raise SnapshotNotFound(
            f"the repository holds no snapshot{where} taken since "
            f"{since.isoformat(timespec='seconds')}"
        )
    seed = os.urandom(8).hex() if seed is None else seed
    snap = random.Random(seed).choice(candidates)
    return snap, {
        "random_within_s": within.total_seconds(),
        "since": since.isoformat(timespec="seconds"),
        "until": until.isoformat(timespec="seconds"),
        "seed": seed,
        "candidates": len(candidates),
        "source": source,
    }
