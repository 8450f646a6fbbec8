"""The local method of physical backups: a non-exclusive pg_backup_start/pg_backup_stop
around a walk of the data directory (and tablespaces) through the files pipeline, on the
database host. The walk leaves out what PostgreSQL's documentation says to (prune_rules),
checks page checksums as the chunker reads each block, and the backup is finished
(pg_backup_stop, then waiting for its WAL) by the pipeline's finalize step, before the
snapshot is written.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medvault.errors import SourceUnavailable, UsageError
from medvault.postgres.datadir import read_system_identifier
from medvault.postgres.facts import KIND_PHYSICAL, PhysicalFacts, iso_utc
from medvault.postgres.lsn import parse_lsn, segment_name, segments_between
from medvault.postgres.server import ServerFacts, connect, server_errors, server_facts
from medvault.sources.files import BackupOptions, BlockVerifier, DryRunResult, FileBackup
from medvault.sources.postgres.physical import (
    PhysicalResult,
    PhysicalSource,
    describe_failures,
    of_cluster,
    require_archived,
)

if TYPE_CHECKING:
    import psycopg

    from medvault.repository.repo import Repository

# Directories whose contents PostgreSQL's documentation (and pg_basebackup) leave out; the
# directories themselves are kept so a restored cluster finds them.
EMPTY_DIRS = {
    b"pg_wal",
    b"pg_dynshmem",
    b"pg_notify",
    b"pg_replslot",
    b"pg_serial",
    b"pg_snapshots",
    b"pg_stat_tmp",
    b"pg_subtrans",
}
TOP_LEVEL_FILES = {
    b"postmaster.pid",
    b"postmaster.opts",
    b"backup_label",
    b"tablespace_map",
    b"backup_manifest",
    b"postgresql.auto.conf.tmp",
    b"current_logfiles.tmp",
    b"backup_label.old",
}
_TEMP_RELATION = re.compile(rb"^t\d+_\d+(_(fsm|vm|init))?(\.\d+)?$")
_RELATION = re.compile(rb"^(\d+)(_(fsm|vm|init))?(\.\d+)?$")
_INIT_FORK = re.compile(rb"^(\d+)_init$")


def prune_rules(
    top_dirs: set[bytes],
) -> Callable[[bytes, list[bytes]], tuple[set[bytes], set[bytes]]]:
    """What a physical backup leaves out of a directory, given the roots it walks (pgdata and
    tablespace directories) so that top-level rules apply only at the top."""

    def prune(directory: bytes, names: list[bytes]) -> tuple[set[bytes], set[bytes]]:
        skip = {n for n in names if n == b"pg_internal.init" or n.startswith(b"pgsql_tmp")} | {
            n for n in names if _TEMP_RELATION.match(n)
        }
        empty: set[bytes] = set()
        if directory.rstrip(b"/") in top_dirs:
            skip |= TOP_LEVEL_FILES.intersection(names)
            empty = EMPTY_DIRS.intersection(names)
        # Unlogged relations: only their init fork is backed up (the server resets them to it
        # after a crash or restore anyway).
        unlogged = {m.group(1) for n in names if (m := _INIT_FORK.match(n))}
        if unlogged:
            for n in names:
                m = _RELATION.match(n)
                if m and m.group(1) in unlogged and m.group(3) != b"init":
                    skip.add(n)
        return skip, empty

    return prune


class PhysicalBackup:
    """One local physical backup: preflight checks, pg_backup_start, the walk, and the
    finalize step."""

    def __init__(
        self,
        repo: Repository,
        source: str,
        settings: PhysicalSource,
        backup_type: str = "incremental",
        tags: tuple[str, ...] = (),
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.repo = repo
        self.source = source
        self.settings = settings
        self.backup_type = backup_type
        self.tags = tags
        self.on_progress = on_progress
        self._conn: psycopg.Connection[Any] | None = None
        self._start: dict[str, Any] = {}  # the facts known once the backup has started
        self._facts: PhysicalFacts | None = None
        self._verified: list[tuple[bytes, BlockVerifier]] = []
        self._pgdata = ""
        self._tablespace_dirs: dict[str, str] = {}

    # -- checks before anything is read ---------------------------------------------------

    def _preflight(self, conn: psycopg.Connection[Any]) -> ServerFacts:
        facts = server_facts(conn)
        where = f"source {self.source}"
        if facts.archive_mode == "off":
            raise SourceUnavailable(
                f"archive_mode is off on {where}: a physical backup is useless without its WAL; "
                f"set archive_mode = on and archive_command = 'medvault wal-push {self.source} "
                "%p' and restart the server"
            )
        if facts.in_recovery:
            raise SourceUnavailable(f"{where} is a standby; take physical backups on the primary")
        if not self.settings.pgdata:
            raise UsageError(
                f"source.{self.source}.pgdata is not set: give the data directory, or use "
                "--method stream to copy it over the replication protocol"
            )
        pgdata = self.settings.pgdata
        if not os.path.isdir(pgdata):
            raise SourceUnavailable(f"data directory {pgdata} of {where} does not exist")
        local_id = read_system_identifier(pgdata)
        if local_id is None:
            raise SourceUnavailable(
                f"cannot read {pgdata}/global/pg_control: run medvault as the user owning the "
                "data directory (usually postgres)"
            )
        if local_id != facts.system_identifier:
            raise SourceUnavailable(
                f"{pgdata} belongs to cluster {local_id}, but the server at the source's dsn "
                f"is cluster {facts.system_identifier}: pgdata and dsn of {where} disagree"
            )
        return facts

    def _tablespaces(self, pgdata: str) -> dict[str, str]:
        links = os.path.join(pgdata, "pg_tblspc")
        found = {}
        for name in sorted(os.listdir(links)) if os.path.isdir(links) else []:
            path = os.path.join(links, name)
            if os.path.islink(path):
                found[name] = os.path.realpath(path)
        return found

    # -- the backup -----------------------------------------------------------------------

    def run(self) -> PhysicalResult:
        conn = connect(self.settings.dsn, what=f"PostgreSQL source {self.source}")
        self._conn = conn
        try:
            server = self._preflight(conn)
            pgdata = os.path.realpath(str(self.settings.pgdata))
            tablespaces = self._tablespaces(pgdata)
            self._pgdata, self._tablespace_dirs = pgdata, tablespaces
            label = f"medvault {self.source} {socket.gethostname()}"
            row = conn.execute(
                "SELECT pg_backup_start(%s, %s), clock_timestamp(),"
                " (SELECT timeline_id FROM pg_control_checkpoint())",
                (label, self.settings.checkpoint == "fast"),
            ).fetchone()
            assert row is not None
            start_lsn = parse_lsn(str(row[0]))
            self._start = {
                "pg_version_num": server.version_num,
                "pg_version": server.version,
                "system_identifier": server.system_identifier,
                "timeline": int(row[2]),
                "start_lsn": start_lsn,
                "start_wal": segment_name(int(row[2]), start_lsn, server.wal_segment_size),
                "start_time": iso_utc(row[1]),
                "data_checksums": server.data_checksums,
                "wal_segment_size": server.wal_segment_size,
                "method": "local",
                "pgdata": pgdata,
                "tablespaces": tablespaces,
            }
            options = self._walk_options(pgdata, tablespaces, server)
            options.verifier_for = self._verifier_factory(pgdata, tablespaces, start_lsn, server)
            options.finalize = self._finish
            result = FileBackup(self.repo, options, self.on_progress).run()
        finally:
            conn.close()  # also aborts a backup still in progress on the server
        assert self._facts is not None  # a snapshot is saved only once _finish has run
        failures = list(self._facts.checksum_failures or ())
        return PhysicalResult(result, self._facts, failures)

    def dry_run(self) -> DryRunResult:
        """Walk and chunk the data directory (and tablespaces) as run() would, against the
        repository's index, and store nothing. No pg_backup_start: the server is only asked
        the preflight's questions, so pages are not checked (that needs the start LSN) and the
        WAL that would make the copy consistent is not counted."""
        conn = connect(self.settings.dsn, what=f"PostgreSQL source {self.source}")
        try:
            server = self._preflight(conn)
        finally:
            conn.close()
        pgdata = os.path.realpath(str(self.settings.pgdata))
        options = self._walk_options(pgdata, self._tablespaces(pgdata), server)
        return FileBackup(self.repo, options, self.on_progress).dry_run()

    def _walk_options(
        self, pgdata: str, tablespaces: dict[str, str], server: ServerFacts
    ) -> BackupOptions:
        layout = {"pgdata": pgdata} | {f"tablespaces/{o}": p for o, p in tablespaces.items()}
        roots = {os.fsencode(p) for p in layout.values()}
        return BackupOptions(
            source=self.source,
            paths=[pgdata],
            backup_type=self.backup_type,
            tags=self.tags,
            tier=self.settings.tier,
            kind=KIND_PHYSICAL,
            layout=layout,
            prune=prune_rules(roots),
            volatile=True,
            parent_filter=of_cluster(server.system_identifier),
            skip_paths=self._repository_paths(),
        )

    def _repository_paths(self) -> tuple[str, ...]:
        local = self.repo.local_path
        return (local,) if local else ()

    def _verifier_factory(
        self, pgdata: str, tablespaces: dict[str, str], start_lsn: int, server: ServerFacts
    ) -> Callable[[bytes], BlockVerifier | None] | None:
        if not server.data_checksums:
            return None
        from medvault.sources.postgres.checksums import PageVerifier, relation_file_info

        roots = [(os.fsencode(pgdata) + b"/", b"")] + [
            (os.fsencode(p) + b"/", b"pg_tblspc/" + oid.encode() + b"/")
            for oid, p in tablespaces.items()
        ]

        def verifier_for(path: bytes) -> BlockVerifier | None:
            for root, prefix in roots:
                if path.startswith(root):
                    info = relation_file_info(prefix + path[len(root) :])
                    if info is None:
                        return None
                    verifier = PageVerifier(info[1], start_lsn)
                    self._verified.append((path, verifier))
                    return verifier
            return None

        return verifier_for

    def _finish(self) -> dict[str, Any]:
        """pg_backup_stop, then wait until the archive holds the WAL the backup needs."""
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT lsn, labelfile, spcmapfile, clock_timestamp() FROM pg_backup_stop(false)"
        ).fetchone()
        assert row is not None
        stop_lsn = parse_lsn(str(row[0]))
        start = self._start
        size = start["wal_segment_size"]
        needed = segments_between(start["timeline"], start["start_lsn"], stop_lsn, size)
        bad = [(os.fsdecode(p), list(v.bad_blocks)) for p, v in self._verified if v.bad_blocks]
        self._verified.clear()
        failures = None
        if start["data_checksums"]:
            failures = tuple(
                describe_failures(self.settings.dsn, bad, self._pgdata, self._tablespace_dirs)
            )
        facts = PhysicalFacts(
            **start,
            stop_lsn=stop_lsn,
            stop_wal=needed[-1],
            stop_time=iso_utc(row[3]),
            backup_label=str(row[1]),
            tablespace_map=str(row[2] or ""),
            checksum_failures=failures,
        )
        require_archived(self.repo, self.source, self.settings, needed)
        self._facts = facts
        return facts.to_map()


def backup_physical(
    repo: Repository,
    source: str,
    settings: PhysicalSource,
    backup_type: str = "incremental",
    tags: tuple[str, ...] = (),
    on_progress: Callable[[int], None] | None = None,
) -> PhysicalResult:
    # What the server answers to a query (a privilege the role lacks, a statement cancelled)
    # is said in one line, as a connection failure is.
    with server_errors(f"physical backup of source {source}"):
        return PhysicalBackup(repo, source, settings, backup_type, tags, on_progress).run()


def dry_run_physical(
    repo: Repository,
    source: str,
    settings: PhysicalSource,
    backup_type: str = "incremental",
    on_progress: Callable[[int], None] | None = None,
) -> DryRunResult:
    with server_errors(f"dry run of a physical backup of source {source}"):
        return PhysicalBackup(repo, source, settings, backup_type, (), on_progress).dry_run()
