"""The WAL of a physical drill: the files recovery reads, in order (the plan), fetched by
the drill itself into a spool in the scratch space a bounded number of segments ahead of
replay, and a restore_command script that hands them to the server (or fails at once for a
name the plan lacks, which is how PostgreSQL learns the archive ends).
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from medvault.errors import MedvaultError, RecoveryFailed
from medvault.postgres.facts import PhysicalFacts
from medvault.recovery.postgres import write_private_file

if TYPE_CHECKING:
    from medvault.recovery.postgres import WalRange
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository


PLAN = "plan"
COMPLETE = ".complete"
LOOKAHEAD_SEGMENTS = 16  # staged ahead of replay: 256 MiB of scratch space at 16 MiB segments
FETCH_THREADS = 4
STOP_TIMEOUT_S = 60
# restore_command: hand over a staged file; fail at once for a name the plan lacks (how
# PostgreSQL learns where the archive ends); wait for a planned one until the fetcher is done.
# Segments are moved (PostgreSQL keeps its own copy in pg_wal), history files copied (they
# are asked for more than once).
RESTORE_SCRIPT = """#!/bin/sh
spool={spool}
grep -qxF "$1" "$spool/{plan}" || exit 1
while :; do
    if [ -f "$spool/$1" ]; then
        case "$1" in
            *.history) exec cp "$spool/$1" "$2" ;;
            *) exec mv "$spool/$1" "$2" ;;
        esac
    fi
    [ -f "$spool/{complete}" ] && exit 1
    sleep 0.05
done
"""


def wal_plan(repo: Repository, snapshot: Snapshot, wal: WalRange) -> list[str]:
    """The files recovery reads, in order: the history files of the timeline chain, then
    every segment from the backup's first to `wal.last`, each from the timeline that
    supplies it."""
    from medvault.postgres.lsn import SEGMENT, segment_number
    from medvault.postgres.timelines import history_name, period_segments, timeline_periods
    from medvault.repository.wal import WalArchive

    archive = WalArchive(repo, snapshot.source)
    archive.with_secondary = True
    size = PhysicalFacts.of(snapshot).wal_segment_size
    first = segment_number(wal.first, size)
    last = segment_number(wal.last, size)
    periods, _ = timeline_periods(archive, wal.timeline)
    plan = [history_name(p.timeline) for p in periods if p.timeline > 1]
    for period in periods:
        low, high = period_segments(period, size)
        low, high = max(low, first), last if high is None else min(high, last)
        for name in archive.names(period.timeline):
            if SEGMENT.match(name) and low <= segment_number(name, size) <= high:
                plan.append(name)
    return plan


class WalFeeder:
    """Fetches the planned WAL into the spool, in order, a bounded distance ahead of the
    server consuming it. `error` holds the first failure; the spool is then marked complete
    so the server stops waiting."""

    def __init__(
        self,
        repo: Repository,
        source: str,
        spool: str,
        plan: list[str],
        owner: tuple[int, int] | None = None,
    ) -> None:
        from medvault.repository.wal import WalArchive

        self.archive = WalArchive(repo, source)
        self.spool = spool
        self.plan = plan
        self.owner = owner  # (uid, gid) the staged files get when medvault is root
        self.error: str | None = None
        self.fetched = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medvault-drill-wal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_TIMEOUT_S)

    def _fetch(self, name: str) -> None:
        """Written under a hidden name and renamed, already owned by the server's account:
        the restore script may take it the moment it appears. No fsync: a throwaway copy."""
        data = self.archive.fetch(name)
        if data is None:
            raise RecoveryFailed(f"{name} vanished from the WAL archive during the drill")
        hidden = os.path.join(self.spool, f".{name}.part")
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(hidden, os.path.join(self.spool, name))

    def _run(self) -> None:
        pending = list(self.plan)
        segments: set[str] = set()
        running: dict[Future[None], str] = {}
        try:
            with ThreadPoolExecutor(FETCH_THREADS, "medvault-drill-fetch") as pool:
                while (pending or running) and not self._stop.is_set():
                    segments = {n for n in segments if os.path.exists(f"{self.spool}/{n}")}
                    while pending and len(running) + len(segments) < LOOKAHEAD_SEGMENTS:
                        name = pending.pop(0)
                        running[pool.submit(self._fetch, name)] = name
                    done, _ = wait(list(running), timeout=0.1, return_when=FIRST_COMPLETED)
                    for future in done:
                        name = running.pop(future)
                        future.result()
                        self.fetched += 1
                        if not name.endswith(".history"):
                            segments.add(name)
        except MedvaultError as exc:
            self.error = f"WAL for the drill could not be fetched: {exc}"
        except OSError as exc:
            self.error = f"WAL for the drill could not be staged: {exc.strerror}"
        finally:
            with contextlib.suppress(OSError):
                write_private_file(os.path.join(self.spool, COMPLETE), "", 0o644)
