"""The streamed method of physical backups: pg_basebackup over the replication protocol,
for a server whose data directory is not on this machine. Its tar stream feeds the files
pipeline (through a TreeBuilder) and gives the same tree as the local method, so a restore
does not care how the copy was taken; backup_label, tablespace_map and the backup manifest
(whose WAL range the backup needs) are taken out of the stream.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, cast

from medvault.errors import SourceUnavailable
from medvault.postgres.facts import KIND_PHYSICAL, PhysicalFacts, iso_utc
from medvault.postgres.lsn import parse_lsn, segments_between
from medvault.postgres.server import connect, server_errors, server_facts
from medvault.sources.files import BackupOptions, BlockVerifier, FileBackup, TreeBuilder
from medvault.sources.postgres.physical import (
    PhysicalResult,
    PhysicalSource,
    describe_failures,
    require_archived,
)

if TYPE_CHECKING:
    from medvault.repository.chunker import ReadsInto
    from medvault.repository.repo import Repository

# Files of the stream that are not the data directory's: the backup keeps them in its facts
# (backup_label, tablespace_map) or reads its WAL range from them (backup_manifest).
STREAM_SPECIAL = {"backup_label", "tablespace_map", "backup_manifest"}


class TarFeed:
    """pg_basebackup's tar stream as a backup's tree: every member goes to the TreeBuilder
    as it is read, except the STREAM_SPECIAL files, kept in `special`."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.special: dict[str, bytes] = {}

    def __call__(self, tree: TreeBuilder) -> None:
        import tarfile

        from medvault.repository.records import DIR, FILE, SYMLINK, Node

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
                node = Node(
                    name=path.rpartition(b"/")[2],
                    type=DIR if member.isdir() else SYMLINK if member.issym() else FILE,
                    mode=member.mode & 0o7777,
                    uid=member.uid,
                    gid=member.gid,
                    user=member.uname,
                    group=member.gname,
                    mtime_ns=int(member.mtime * 1_000_000_000),
                )
                if member.isdir():
                    tree.add_directory(path, node)
                elif member.issym():
                    target = os.fsencode(member.linkname)
                    tree.add_symlink(path, Node(**{**node.__dict__, "target": target}))
                elif member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    tree.add_file(path, node, cast("ReadsInto", handle))


def backup_streamed(
    repo: Repository,
    source: str,
    settings: PhysicalSource,
    tags: tuple[str, ...] = (),
    on_progress: Callable[[int], None] | None = None,
) -> PhysicalResult:
    """A full copy through pg_basebackup over the replication protocol: for a server whose
    data directory is not on this machine. WAL still comes from the archive."""
    with server_errors(f"physical backup of source {source}"):
        return _backup_streamed(repo, source, settings, tags, on_progress)


def _backup_streamed(
    repo: Repository,
    source: str,
    settings: PhysicalSource,
    tags: tuple[str, ...],
    on_progress: Callable[[int], None] | None,
) -> PhysicalResult:
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
    feed = TarFeed(proc.stdout)
    recorded: list[PhysicalFacts] = []

    def finish() -> dict[str, Any]:
        code = proc.wait()
        errors.seek(0)
        text = errors.read().decode(errors="replace")
        if code != 0:
            last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
            raise SourceUnavailable(f"pg_basebackup failed: {last[0]}")
        import json

        try:
            manifest = json.loads(feed.special["backup_manifest"])
            wal_range = manifest["WAL-Ranges"][-1]
            points = {"start": wal_range["Start-LSN"], "end": wal_range["End-LSN"]}
        except (KeyError, ValueError, IndexError) as exc:
            raise SourceUnavailable(
                "pg_basebackup sent no usable backup manifest (its WAL range is needed)"
            ) from exc
        label = feed.special.get("backup_label", b"").decode()
        found = re.search(r"START TIMELINE: (\d+)", label)
        timeline = int(found.group(1)) if found else server.timeline
        start_lsn, stop_lsn = parse_lsn(points["start"]), parse_lsn(points["end"])
        size = server.wal_segment_size
        needed = segments_between(timeline, start_lsn, stop_lsn, size)
        started_at = re.search(r"START TIME: (.+)", label)
        with connect(settings.dsn) as conn2:
            row = conn2.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        require_archived(repo, source, settings, needed)
        bad = [(os.fsdecode(p), list(v.bad_blocks)) for p, v in verified if v.bad_blocks]
        failures = describe_failures(settings.dsn, bad, "", {})
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
            tablespace_map=feed.special.get("tablespace_map", b"").decode(),
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
            label = feed.special.get("backup_label", b"").decode()
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
        verifier_for=verifier_for,
        feed=feed,
    )
    try:
        result = FileBackup(repo, options, on_progress).run()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        errors.close()
    facts = recorded[-1]
    return PhysicalResult(result, facts, list(facts.checksum_failures or ()))
