"""The catalog caught up from the repositories' audit chains, and rebuilt from them.

The spool (service/recording.py) brings this host's runs to the catalog; the audit chains in
the repository bring everyone's: another host's runs, runs whose spool file was lost, and the
hourly wal-push counts, which are never spooled. Catch-up reads, per chain, only the records
past the catalog's `chain_heads` row for that repository (AuditLog.entries(chain, after_seq)),
inserts their run records (idempotent by run_id: a run already ingested from the spool is
kept once) and then advances the head.

A "wal-push-count" record (one per source and hour whose pushes succeeded) becomes one row:
operation "wal-push", status ok, started and ended the hour's bounds, duration 0 (no push is
timed), bytes 0, `details` {"count": pushes}, run_id "wal-push-count-<chain>-<seq>" (the same
on every catalog, so a rebuild gives the same row).

Opening a repository costs a key derivation: each repository is opened once per command, and
a repository sharing the keys of one already open is opened with them (no derivation).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvault.errors import MedvaultError, UsageError, first_line
from medvault.service.recording import catalog_url, ingest_spool

if TYPE_CHECKING:
    from medvault.catalog.store import Catalog
    from medvault.repository.audit import AuditEntry
    from medvault.repository.repo import Repository
    from medvault.service.session import RepositoryTarget, Session

WAL_PUSH_COUNT = "wal-push-count"


# -- which repositories ----------------------------------------------------------------------


def catch_up_targets(session: Session) -> list[RepositoryTarget]:
    """The session's repository (--repo, MEDVAULT_REPOSITORY, or the only one configured);
    with several configured and none chosen, every one of them; with none, nothing."""
    try:
        return [session.target()]
    except UsageError:
        if not session.configured:
            return []
        return [session.target(selector=name) for name in sorted(session.settings.repository)]


def _open_each(
    session: Session, targets: list[RepositoryTarget], *, skip_failures: bool
) -> Iterator[Repository]:
    """Open each target once, with the keys of one already open when they are shared. With
    `skip_failures`, a repository that cannot be opened (no credential configured, not
    reachable, not there) is left out with a one-line note."""
    opened: list[Repository] = []
    for target in targets:
        try:
            repo = session.open_target(target, sharing=opened[0] if opened else None)
        except MedvaultError as exc:
            if not skip_failures:
                raise
            session.notes.append(f"catalog catch-up skipped {target.url}: {first_line(exc)}")
            continue
        opened.append(repo)
        yield repo


# -- audit records as run records ------------------------------------------------------------


def run_of_entry(entry: AuditEntry) -> dict[str, Any] | None:
    """The catalog's run record for an audit record (None: a kind it does not index)."""
    if entry.kind == WAL_PUSH_COUNT:
        record = entry.record
        return {
            "run_id": f"{WAL_PUSH_COUNT}-{entry.chain}-{entry.seq}",
            "operation": "wal-push",
            "source": record.get("source"),
            "repository": record.get("repository"),
            "started": record["started"],
            "ended": record["ended"],
            "duration_s": 0.0,
            "status": "ok",
            "bytes_read": 0,
            "bytes_stored": 0,
            "bytes_restored": 0,
            "snapshots": [],
            "error": None,
            "user": record.get("user") or "",
            "host": record.get("host") or "",
            "shell": record.get("shell") or "",
            "details": {"count": int(record.get("count") or 0)},
        }
    if isinstance(entry.record.get("run_id"), str):
        return entry.record
    return None


@dataclass
class ImportCounts:
    repositories: int = 0
    chains: int = 0
    records: int = 0  # audit records read (past the known heads)
    skipped: int = 0  # audit records the catalog could not take (named in a note)


def _read_chains(
    session: Session,
    repo: Repository,
    counts: ImportCounts,
    known: dict[str, tuple[int, str]],
) -> Iterator[tuple[str, list[dict[str, Any]], AuditEntry | None]]:
    """Per chain: the run records past `known` (chain -> (seq, mac)) and the last audit
    record read (None: nothing new), for the caller to keep the head once they are in."""
    from medvault.catalog.store import row_of
    from medvault.repository.audit import AuditLog

    log = AuditLog(repo, session.caller.host)
    for chain in log.chains():
        counts.chains += 1
        after = known.get(chain, (-1, ""))[0]
        records, last = [], None
        for entry in log.entries(chain, after_seq=after if after >= 0 else None):
            last = entry
            counts.records += 1
            try:
                record = run_of_entry(entry)
                if record is not None:
                    row_of(record)  # one the catalog cannot take must not hold up the rest
                    records.append(record)
            except (ValueError, KeyError, TypeError, AttributeError):
                counts.skipped += 1
                session.notes.append(
                    f"audit record {entry.name} in {repo.url} has no run record the catalog "
                    "can keep; left out"
                )
        yield chain, records, last


def catch_up(session: Session, catalog: Catalog) -> ImportCounts:
    """Bring the catalog up to the audit chains of the session's repositories (see
    catch_up_targets); a repository that cannot be opened without asking anyone is skipped
    with a note. The shell decides whether opening may prompt (its credential source)."""
    counts = ImportCounts()
    for repo in _open_each(session, catch_up_targets(session), skip_failures=True):
        counts.repositories += 1
        repo_id = repo.config.repo_id
        for chain, records, last in _read_chains(session, repo, counts, catalog.heads(repo_id)):
            catalog.add(records)
            if last is not None:
                catalog.set_head(repo_id, chain, last.seq, last.mac)
    return counts


# -- rebuild ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RebuildResult:
    catalog: str  # its URL, the password hidden
    repositories: int
    chains: int
    records: int  # audit records read
    skipped: int  # audit records with no run record the catalog can keep
    spooled: int  # runs taken from this host's spool
    runs: int  # rows in the rebuilt catalog


def _keep_alerts(url: str, fresh: Catalog) -> None:
    """Alert states, silences and their history are not in the audit trail: the fresh file
    takes them from the catalog it replaces."""
    from medvault.catalog.alerts import carry_over
    from medvault.catalog.store import Catalog

    with Catalog.open(url) as old:
        carry_over(old, fresh)


def rebuild(session: Session) -> RebuildResult:
    """Recreate the catalog from the repositories' audit chains alone (and this host's
    spool). Every repository is opened first: one that cannot be is an error, and the
    catalog is left as it was. SQLite: a fresh file, renamed over the old one. PostgreSQL:
    every row of `runs` and `chain_heads` replaced in one transaction (the tables and their
    Alembic revision stay; a reader sees the old catalog or the new one)."""
    from medvault.catalog.store import Catalog, sqlite_path

    url = catalog_url(session)
    if url is None:
        raise UsageError(
            "no catalog: set [catalog] url in medvault.toml, or MEDVAULT_STATE_DIR for the "
            "SQLite catalog"
        )
    targets = catch_up_targets(session)
    if not targets:
        raise UsageError(
            "no repository to rebuild the catalog from: pass --repo PATH, set "
            "MEDVAULT_REPOSITORY, or define [repository.NAME] in medvault.toml"
        )
    repos = list(_open_each(session, targets, skip_failures=False))
    path = sqlite_path(url)
    fresh_path = path.with_name(f".{path.name}.rebuild-{os.getpid()}") if path else None
    counts = ImportCounts(repositories=len(repos))
    if fresh_path is not None:
        fresh_path.unlink(missing_ok=True)
        os.close(os.open(fresh_path, os.O_WRONLY | os.O_CREAT, 0o600))
        catalog = Catalog.open(f"sqlite:///{fresh_path}")
    else:
        catalog = Catalog.open(url)
    try:
        try:
            records: list[dict[str, Any]] = []
            heads: list[tuple[str, str, int, str]] = []
            for repo in repos:
                for chain, found, last in _read_chains(session, repo, counts, {}):
                    records += found
                    if last is not None:
                        heads.append((repo.config.repo_id, chain, last.seq, last.mac))
            catalog.replace(records, heads)
            if fresh_path is not None and path is not None and path.exists():
                _keep_alerts(url, catalog)
            spooled = ingest_spool(catalog, session.state_dir).ingested
            total = catalog.count_runs()
            shown = catalog.url if fresh_path is None else Catalog.shown_url(url)
        finally:
            catalog.close()
        if fresh_path is not None and path is not None:
            _replace_sqlite(fresh_path, path)
    except BaseException:
        if fresh_path is not None:
            fresh_path.unlink(missing_ok=True)
        raise
    return RebuildResult(
        shown,
        counts.repositories,
        counts.chains,
        counts.records,
        counts.skipped,
        spooled,
        total,
    )


def _replace_sqlite(fresh: Path, path: Path) -> None:
    """Put the fresh database in place of the old one. The fresh one leaves WAL mode first
    (no -wal of its own to lose), the old one's WAL is emptied into it and removed, so that
    no log of the old database is replayed into the new."""
    with sqlite3.connect(fresh) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    if path.exists():
        old = sqlite3.connect(path)
        try:
            old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError:
            pass  # a damaged catalog is what a rebuild replaces
        finally:
            old.close()
    for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    os.replace(fresh, path)
