"""Physical backups of a PostgreSQL cluster: a non-exclusive pg_backup_start/pg_backup_stop
around a walk of the data directory (and tablespaces) through the files pipeline.

The snapshot's tree is laid out by role: `pgdata/` holds the data directory, `tablespaces/OID/`
each tablespace's directory. backup_label and tablespace_map, which PostgreSQL hands back at
pg_backup_stop, are kept in the snapshot's facts and written by the restore. A backup counts
only once the WAL from its start to its stop LSN is in the archive: before that it cannot be
made consistent, so no snapshot is written until the archive holds that WAL (bounded wait).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from time import time_ns
from typing import TYPE_CHECKING, Any, cast

from medvault.config import PostgresSourceSettings
from medvault.errors import IntegrityError, SourceUnavailable, UsageError, WalMissing
from medvault.postgres.datadir import read_system_identifier
from medvault.postgres.facts import KIND_PHYSICAL, ChecksumFailure, PhysicalFacts, iso_utc
from medvault.postgres.lsn import parse_lsn, segment_name, segments_between
from medvault.postgres.server import ServerFacts, connect, server_facts
from medvault.sources.files import BackupOptions, BackupResult, BlockVerifier, FileBackup

if TYPE_CHECKING:
    import psycopg

    from medvault.repository.chunker import ReadsInto
    from medvault.repository.records import Snapshot
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


@dataclass
class PhysicalResult:
    files: BackupResult
    facts: PhysicalFacts
    checksum_failures: list[ChecksumFailure] = field(default_factory=list)


def of_cluster(system_identifier: str) -> Callable[[Snapshot], bool]:
    """Which physical snapshots may be an incremental backup's parent: this cluster's."""

    def accept(snapshot: Snapshot) -> bool:
        try:
            return PhysicalFacts.of(snapshot).system_identifier == system_identifier
        except IntegrityError:
            return False  # never a parent; restoring it says what is wrong

    return accept


class PhysicalBackup:
    def __init__(
        self,
        repo: Repository,
        source: str,
        settings: PostgresSourceSettings,
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
            layout = {"pgdata": pgdata} | {f"tablespaces/{o}": p for o, p in tablespaces.items()}
            roots = {os.fsencode(p) for p in layout.values()}
            options = BackupOptions(
                source=self.source,
                paths=[pgdata],
                backup_type=self.backup_type,
                tags=self.tags,
                tier=self.settings.tier,
                kind=KIND_PHYSICAL,
                layout=layout,
                prune=prune_rules(roots),
                verifier_for=self._verifier_factory(pgdata, tablespaces, start_lsn, server),
                volatile=True,
                finalize=self._finish,
                parent_filter=of_cluster(server.system_identifier),
            )
            options.skip_paths = self._repository_paths()
            result = FileBackup(self.repo, options, self.on_progress).run()
        finally:
            conn.close()  # also aborts a backup still in progress on the server
        assert self._facts is not None  # a snapshot is saved only once _finish has run
        failures = list(self._facts.checksum_failures or ())
        return PhysicalResult(result, self._facts, failures)

    def _repository_paths(self) -> tuple[str, ...]:
        local = self.repo.backend.local_path
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
        from medvault.repository.wal import WalArchive
        from medvault.sources.postgres.wal import wait_for_segments

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
            failures = tuple(self._describe_failures(bad, self._pgdata, self._tablespace_dirs))
        facts = PhysicalFacts(
            **start,
            stop_lsn=stop_lsn,
            stop_wal=needed[-1],
            stop_time=iso_utc(row[3]),
            backup_label=str(row[1]),
            tablespace_map=str(row[2] or ""),
            checksum_failures=failures,
        )
        missing = wait_for_segments(
            WalArchive(self.repo, self.source), needed, float(self.settings.archive_timeout_s)
        )
        if missing:
            raise WalMissing(
                f"backup not saved: WAL {', '.join(missing[:3])}"
                f"{' …' if len(missing) > 3 else ''} did not reach the archive within "
                f"{self.settings.archive_timeout_s} s; check archive_command and "
                f"`medvault wal-status {self.source}`"
            )
        self._facts = facts
        return facts.to_map()

    # -- reporting ------------------------------------------------------------------------

    def _describe_failures(
        self, bad: list[tuple[str, list[int]]], pgdata: str, tablespaces: dict[str, str]
    ) -> list[ChecksumFailure]:
        """Name each damaged file's relation (schema.table) so a DBA knows what to repair."""
        if not bad:
            return []
        out = []
        for path, blocks in bad:
            rel = path
            tablespace = 0
            if path.startswith(pgdata + "/"):
                rel = path[len(pgdata) + 1 :]
            for oid, location in tablespaces.items():
                if path.startswith(location + "/"):
                    rel = f"pg_tblspc/{oid}/{path[len(location) + 1 :]}"
                    tablespace = int(oid)
            out.append(ChecksumFailure(rel, self._relation_name(rel, tablespace), tuple(blocks)))
        return out

    def _relation_name(self, rel: str, tablespace: int) -> str:
        parts = rel.split("/")
        filenode = re.match(r"^(\d+)", parts[-1])
        if filenode is None:
            return "?"
        try:
            if parts[0] == "global":
                with connect(self.settings.dsn) as conn:
                    row = conn.execute(
                        "SELECT pg_filenode_relation(1664, %s)::text", (int(filenode.group(1)),)
                    ).fetchone()
                return str(row[0]) if row and row[0] else f"global/{filenode.group(1)}"
            dboid = int(parts[-2])
            with connect(self.settings.dsn) as conn:
                found = conn.execute(
                    "SELECT datname FROM pg_database WHERE oid = %s", (dboid,)
                ).fetchone()
            if found is None:
                return f"relfilenode {filenode.group(1)} in database oid {dboid}"
            with connect(self.settings.dsn, dbname=str(found[0])) as conn:
                row = conn.execute(
                    "SELECT n.nspname || '.' || c.relname FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE c.oid = pg_filenode_relation(%s, %s)",
                    (tablespace, int(filenode.group(1))),
                ).fetchone()
            name = str(row[0]) if row and row[0] else f"relfilenode {filenode.group(1)}"
            return f"{name} in database {found[0]}"
        except SourceUnavailable:
            return f"relfilenode {filenode.group(1)}"


def backup_physical(
    repo: Repository,
    source: str,
    settings: PostgresSourceSettings,
    backup_type: str = "incremental",
    tags: tuple[str, ...] = (),
    on_progress: Callable[[int], None] | None = None,
) -> PhysicalResult:
    return PhysicalBackup(repo, source, settings, backup_type, tags, on_progress).run()


class _TarStreamBackup(FileBackup):
    """The files pipeline fed from pg_basebackup's tar stream instead of a directory walk:
    same tree layout (pgdata/...), so restores do not care how the copy was taken."""

    def __init__(
        self,
        repo: Repository,
        options: BackupOptions,
        on_progress: Callable[[int], None] | None,
        stream: Any,
        verifier_for: Callable[[bytes], BlockVerifier | None] | None,
    ) -> None:
        super().__init__(repo, options, on_progress)
        self._stream = stream
        self._tar_verifier_for = verifier_for
        self.special: dict[str, bytes] = {}

    def _walk_roots(self, roots: list[bytes], parent_tree: bytes | None) -> Any:
        import tarfile

        from medvault.repository.packs import DATA_BLOB
        from medvault.repository.records import DIR, FILE, SYMLINK, Node
        from medvault.sources.files import _PendingDir

        now = time_ns()
        top = Node(name=b"pgdata", type=DIR, mode=0o700, mtime_ns=now)
        dirs: dict[bytes, Node] = {b"": top}
        children: dict[bytes, list[tuple[Node, Any]]] = {b"": []}
        with tarfile.open(fileobj=self._stream, mode="r|") as tar:
            for member in tar:
                path = os.fsencode(member.name).strip(b"/")
                if path.startswith(b"./"):
                    path = path[2:]
                if not path or path == b".":
                    continue
                if member.isfile() and path.decode(errors="replace") in STREAM_SPECIAL:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    self.special[path.decode()] = handle.read()
                    continue
                parent, _, name = path.rpartition(b"/")
                if parent not in children:
                    self._ensure_dir(parent, dirs, children, now)
                node = Node(
                    name=name,
                    type=DIR if member.isdir() else SYMLINK if member.issym() else FILE,
                    mode=member.mode & 0o7777,
                    uid=member.uid,
                    gid=member.gid,
                    user=member.uname,
                    group=member.gname,
                    mtime_ns=int(member.mtime * 1_000_000_000),
                )
                if member.isdir():
                    if path not in children:
                        children[path] = []
                        children[parent].append((node, path))
                    dirs[path] = node
                elif member.issym():
                    children[parent].append(
                        (Node(**{**node.__dict__, "target": os.fsencode(member.linkname)}), None)
                    )
                elif member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    verifier = self._tar_verifier_for(path) if self._tar_verifier_for else None
                    futures = []
                    total = 0
                    on_block = verifier.feed if verifier is not None else None
                    for chunk in self._chunker.chunks(cast("ReadsInto", handle), on_block):
                        total += len(chunk)
                        futures.append(self._sink.submit(chunk, DATA_BLOB))
                    if verifier is not None:
                        verifier.finish()
                    self._counts["new"] += 1
                    self._counts["read"] += total
                    self._counts["total"] += total
                    children[parent].append((Node(**{**node.__dict__, "size": total}), futures))

        def build(key: bytes) -> _PendingDir:
            pending = _PendingDir()
            for node, work in children[key]:
                if isinstance(work, bytes):
                    pending.entries.append((dirs[work], build(work)))
                    self._counts["dirs"] += 1
                else:
                    pending.entries.append((node, work))
            self._enqueue(pending)
            return pending

        root = _PendingDir()
        root.entries.append((top, build(b"")))
        self._enqueue(root)
        return root

    @staticmethod
    def _ensure_dir(
        path: bytes,
        dirs: dict[bytes, Any],
        children: dict[bytes, list[tuple[Any, Any]]],
        now: int,
    ) -> None:
        from medvault.repository.records import DIR, Node

        parent, _, name = path.rpartition(b"/")
        if parent not in children:
            _TarStreamBackup._ensure_dir(parent, dirs, children, now)
        dirs[path] = Node(name=name, type=DIR, mode=0o700, mtime_ns=now)
        children[path] = []
        children[parent].append((dirs[path], path))


STREAM_SPECIAL = {"backup_label", "tablespace_map", "backup_manifest"}


def backup_streamed(
    repo: Repository,
    source: str,
    settings: PostgresSourceSettings,
    tags: tuple[str, ...] = (),
    on_progress: Callable[[int], None] | None = None,
) -> PhysicalResult:
    """A full copy through pg_basebackup over the replication protocol: for a server whose
    data directory is not on this machine. WAL still comes from the archive."""
    import subprocess
    import tempfile

    from medvault import childenv
    from medvault.postgres.programs import find_program

    with connect(settings.dsn, what=f"PostgreSQL source {source}") as conn:
        server = server_facts(conn)
        spaces = [
            str(row[0])
            for row in conn.execute(
                "SELECT spcname FROM pg_tablespace"
                " WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY spcname"
            ).fetchall()
        ]
    if spaces:
        # pg_basebackup writes a single tablespace to a stream; the others would need files.
        raise SourceUnavailable(
            f"source {source} has tablespaces ({', '.join(spaces)}), which --method stream "
            "cannot carry; back it up on the database host with the local method"
        )
    if server.archive_mode == "off":
        raise SourceUnavailable(
            f"archive_mode is off on source {source}: a physical backup is useless without "
            "its WAL; turn archiving on first"
        )
    program = find_program("pg_basebackup", settings.pg_bin, server.major)
    # stderr holds no data, only progress and errors; a spooled buffer keeps it in memory.
    errors = tempfile.SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115
    with childenv.libpq_client(settings.dsn) as client:
        args = [program, "--dbname", str(client.dsn), "-D", "-", "-F", "tar", "-X", "none"]
        args += ["--checkpoint", settings.checkpoint, "--manifest-checksums", "NONE"]
        args += ["--no-verify-checksums"]  # medvault verifies pages itself, names relations
        args += ["--label", f"medvault {source}", "--no-password"]
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=client.env,
            pass_fds=client.pass_fds,
        )
    assert proc.stdout is not None
    holder: dict[str, _TarStreamBackup] = {}
    recorded: list[PhysicalFacts] = []

    def finish() -> dict[str, Any]:
        from medvault.repository.wal import WalArchive
        from medvault.sources.postgres.wal import wait_for_segments

        code = proc.wait()
        errors.seek(0)
        text = errors.read().decode(errors="replace")
        if code != 0:
            last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
            raise SourceUnavailable(f"pg_basebackup failed: {last[0]}")
        import json

        try:
            manifest = json.loads(holder["backup"].special["backup_manifest"])
            wal_range = manifest["WAL-Ranges"][-1]
            points = {"start": wal_range["Start-LSN"], "end": wal_range["End-LSN"]}
        except (KeyError, ValueError, IndexError) as exc:
            raise SourceUnavailable(
                "pg_basebackup sent no usable backup manifest (its WAL range is needed)"
            ) from exc
        label = holder["backup"].special.get("backup_label", b"").decode()
        found = re.search(r"START TIMELINE: (\d+)", label)
        timeline = int(found.group(1)) if found else server.timeline
        start_lsn, stop_lsn = parse_lsn(points["start"]), parse_lsn(points["end"])
        size = server.wal_segment_size
        needed = segments_between(timeline, start_lsn, stop_lsn, size)
        started_at = re.search(r"START TIME: (.+)", label)
        with connect(settings.dsn) as conn2:
            row = conn2.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        missing = wait_for_segments(
            WalArchive(repo, source), needed, float(settings.archive_timeout_s)
        )
        if missing:
            raise WalMissing(
                f"backup not saved: WAL {', '.join(missing[:3])} did not reach the archive "
                f"within {settings.archive_timeout_s} s; check archive_command and "
                f"`medvault wal-status {source}`"
            )
        bad = [(os.fsdecode(p), list(v.bad_blocks)) for p, v in verified if v.bad_blocks]
        failures = PhysicalBackup(repo, source, settings)._describe_failures(bad, "", {})
        facts = PhysicalFacts(
            pg_version_num=server.version_num,
            pg_version=server.version,
            system_identifier=server.system_identifier,
            timeline=timeline,
            start_lsn=start_lsn,
            start_wal=needed[0],
            start_time=started_at.group(1).strip() if started_at else "",
            data_checksums=server.data_checksums,
            wal_segment_size=server.wal_segment_size,
            method="stream",
            pgdata=server.data_directory,
            tablespaces={},
            stop_lsn=stop_lsn,
            stop_wal=needed[-1],
            stop_time=iso_utc(row[0]),
            backup_label=label,
            tablespace_map=holder["backup"].special.get("tablespace_map", b"").decode(),
            checksum_failures=tuple(failures),
        )
        recorded.append(facts)
        return facts.to_map()

    verified: list[tuple[bytes, BlockVerifier]] = []
    verifier_for = None
    if server.data_checksums:
        from medvault.sources.postgres.checksums import PageVerifier, relation_file_info

        def tar_verifier(path: bytes) -> BlockVerifier | None:
            info = relation_file_info(path)
            if info is None:
                return None
            # backup_label is the stream's first member: pages newer than its start LSN may
            # be torn by concurrent writes and are rebuilt from WAL, so they are not judged.
            label = holder["backup"].special.get("backup_label", b"").decode()
            found = re.search(r"START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)", label)
            verifier = PageVerifier(info[1], parse_lsn(found.group(1)) if found else 0)
            verified.append((path, verifier))
            return verifier

        verifier_for = tar_verifier
    options = BackupOptions(
        source=source,
        paths=[],
        backup_type="full",
        tags=tags,
        tier=settings.tier,
        kind=KIND_PHYSICAL,
        layout={"pgdata": "pg_basebackup"},
        volatile=True,
        finalize=finish,
    )
    backup = _TarStreamBackup(repo, options, on_progress, proc.stdout, verifier_for)
    holder["backup"] = backup
    try:
        result = backup.run()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        errors.close()
    facts = recorded[-1]
    return PhysicalResult(result, facts, list(facts.checksum_failures or ()))
