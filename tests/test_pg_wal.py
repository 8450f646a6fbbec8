"""The WAL archive: archive_command and restore_command against real PostgreSQL clusters."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from tests.pgcluster import (
    MEDVAULT,
    PgCluster,
    PgWorld,
    as_postgres,
    make_pg_tempdir,
    run_as_postgres,
)

from medvault.backends import open_backend
from medvault.config import PostgresSourceSettings, RepositorySettings
from medvault.postgres.lsn import (
    format_lsn,
    parse_lsn,
    segment_name,
    segment_start_lsn,
    segments_between,
)
from medvault.postgres.timelines import missing_segments, parse_history
from medvault.repository.keys import Credential, read_keyfile
from medvault.repository.repo import Repository
from medvault.repository.wal import WalArchive
from medvault.sources.postgres.physical import wait_for_segments
from medvault.sources.postgres.wal import push_file
from medvault.walconfig import POSTGRES_SOURCE_KEYS, REPOSITORY_KEYS

MiB = 1024 * 1024
EXIT_CONFLICT = 18
EXIT_MISSING = 19
EXIT_SERVER_UNREACHABLE = 15
EXIT_NOT_ARCHIVED = 1
EXIT_UNUSABLE = 126


def open_archive(world: PgWorld, source: str = "emr") -> WalArchive:
    credential = Credential(keyfile_secret=read_keyfile(world.key_file))
    return WalArchive(Repository.open(open_backend(str(world.repo)), credential), source)


def object_path(world: PgWorld, name: str, source: str = "emr") -> Path:
    return world.repo / "wal" / source / name[:8] / name


def generate_segments(cluster: PgCluster, count: int) -> list[str]:
    """Write WAL and switch `count` times; the names of the segments closed."""
    names = []
    for _ in range(count):
        cluster.execute("CREATE TABLE IF NOT EXISTS gen (x int)")
        cluster.execute("INSERT INTO gen SELECT generate_series(1, 20000)")
        names.append(cluster.switch_wal())
    return names


def pg_file(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    as_postgres(path)
    return path


def crafted_segment(
    name: str, system_identifier: int, segment_size: int = MiB, filler: bytes = b""
) -> bytes:
    """A segment with a valid long page header (what push_file checks) and some content."""
    header = bytearray(40)
    header[0:2] = (0xD110).to_bytes(2, "little")  # PostgreSQL 15's XLOG_PAGE_MAGIC
    header[2:4] = (0x0002).to_bytes(2, "little")  # XLP_LONG_HEADER
    header[4:8] = int(name[:8], 16).to_bytes(4, "little")
    header[8:16] = segment_start_lsn(name, segment_size).to_bytes(8, "little")
    header[24:32] = system_identifier.to_bytes(8, "little")
    header[32:36] = segment_size.to_bytes(4, "little")
    header[36:40] = (8192).to_bytes(4, "little")
    body = (filler or name.encode()) * 64
    return bytes(header) + body + bytes(segment_size - len(header) - len(body))


# -- names and LSN arithmetic --------------------------------------------------------------


def test_lsn_text_round_trips_and_names_follow_postgresql() -> None:
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert format_lsn(0x16B374D848) == "16/B374D848"
    assert segment_name(1, parse_lsn("0/3000028")) == "000000010000000000000003"
    assert segment_name(2, parse_lsn("1/FF000000")) == "0000000200000001000000FF"
    assert segment_name(1, parse_lsn("1/00100000"), MiB) == "000000010000000100000001"
    assert segment_start_lsn("000000010000000100000001", MiB) == 0x100100000
    assert segments_between(1, parse_lsn("0/2000028"), parse_lsn("0/5000000"), 16 * MiB) == [
        "000000010000000000000002",
        "000000010000000000000003",
        "000000010000000000000004",
    ]


def test_history_file_parses_into_parent_timelines_and_switch_points() -> None:
    text = "1\t0/3000000\tno recovery target specified\n\n2\t0/5000A0\tbefore 2026-01-01\n"
    assert parse_history(text) == [(1, 0x3000000), (2, 0x5000A0)]


def test_fast_config_reader_knows_every_key_the_settings_models_accept() -> None:
    assert set(PostgresSourceSettings.model_fields) == POSTGRES_SOURCE_KEYS
    assert set(RepositorySettings.model_fields) == REPOSITORY_KEYS


# -- timelines and gaps, on crafted segments -----------------------------------------------


def test_missing_segments_follows_timeline_switches(repo: Repository) -> None:
    archive = WalArchive(repo, "emr")
    sysid = 7_300_000_000_000_000_001
    folder = make_pg_tempdir()
    try:

        def push(timeline: int, segno: int) -> None:
            name = segment_name(timeline, segno * MiB, MiB)
            push_file(archive, str(pg_file(folder, name, crafted_segment(name, sysid))))

        # Timeline 1 runs to 0/480000 (inside segment 4); timeline 2 branches there and runs
        # to 0/6A0000; timeline 3 branches from 2 there.
        for segno in (1, 2, 3, 4, 5):  # 5 on timeline 1 is the abandoned future
            push(1, segno)
        for segno in (4, 5, 6):
            push(2, segno)
        for segno in (6, 7, 8):
            push(3, segno)
        archive.push("00000002.history", b"1\t0/480000\tno recovery target specified\n")
        archive.push("00000003.history", b"1\t0/480000\tx\n2\t0/6A0000\ty\n")

        start = parse_lsn("0/100028")
        assert missing_segments(archive, 3, start, None, MiB) == []
        assert missing_segments(archive, 3, start, parse_lsn("0/A00010"), MiB) == [
            segment_name(3, 9 * MiB, MiB),
            segment_name(3, 10 * MiB, MiB),
        ]
        assert missing_segments(archive, 2, start, parse_lsn("0/600010"), MiB) == []

        # Segment 2 of timeline 1 and segment 5 of timeline 2 go missing: both are needed
        # on the way to timeline 3; timeline 1's own segment 5 never was.
        Path(repo.backend.url, f"wal/emr/00000001/{segment_name(1, 2 * MiB, MiB)}").unlink()
        Path(repo.backend.url, f"wal/emr/00000002/{segment_name(2, 5 * MiB, MiB)}").unlink()
        assert missing_segments(archive, 3, start, None, MiB) == [
            segment_name(1, 2 * MiB, MiB),
            segment_name(2, 5 * MiB, MiB),
        ]
        # On timeline 1 alone, recovery reads 1..5 there.
        assert missing_segments(archive, 1, start, None, MiB) == [segment_name(1, 2 * MiB, MiB)]
        # A timeline whose history file is not archived says so.
        push(4, 9)
        assert "00000004.history" in missing_segments(archive, 4, 9 * MiB, None, MiB)
        assert wait_for_segments(
            archive, [segment_name(3, 8 * MiB, MiB), segment_name(3, 9 * MiB, MiB)], 0.3
        ) == [segment_name(3, 9 * MiB, MiB)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_wal_object_cannot_be_renamed_undetected(repo: Repository) -> None:
    archive = WalArchive(repo, "emr")
    archive.push("00000002.history", b"1\t0/480000\tx\n")
    archive.push("00000003.history", b"1\t0/480000\tx\n2\t0/6A0000\ty\n")
    base = Path(repo.backend.url, "wal/emr")
    shutil.copy(base / "00000002/00000002.history", base / "00000003/00000003.history")
    with pytest.raises(Exception, match="damaged"):
        archive.fetch("00000003.history")
    assert WalArchive(repo, "other").fetch("00000002.history") is None


# -- archive_command and restore_command ----------------------------------------------------


def test_archive_command_archives_every_segment_and_fetch_returns_them(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster()
    closed = generate_segments(cluster, 4)
    with cluster.connect() as conn:  # a backup history file is archived too
        conn.execute("SELECT pg_backup_start('wal test', true)")
        conn.execute("SELECT * FROM pg_backup_stop()")
    last = cluster.switch_wal()
    cluster.wait_archived(last)
    stats = cluster.query("SELECT archived_count, failed_count FROM pg_stat_archiver")[0]
    assert stats[1] == 0, cluster.log()[-3000:]

    archive = open_archive(pg_world)
    names = archive.names()
    assert set(closed) <= set(names)
    assert any(n.endswith(".backup") for n in names)
    assert archive.system_identifier() == str(
        cluster.scalar("SELECT system_identifier FROM pg_control_system()")
    )
    pg_wal = cluster.datadir / "pg_wal"
    dest = make_pg_tempdir()
    try:
        compared = 0
        for name in names:
            if not (pg_wal / name).exists():
                continue  # recycled since
            pg_world.cli("wal-fetch", "emr", name, str(dest / name))
            assert (dest / name).read_bytes() == (pg_wal / name).read_bytes()
            compared += 1
        assert compared >= 4
        assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temp files left
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_repush_identical_succeeds_and_different_content_is_refused(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster()
    name = generate_segments(cluster, 1)[0]
    cluster.wait_archived(name)
    original = (cluster.datadir / "pg_wal" / name).read_bytes()
    folder = make_pg_tempdir()
    try:
        copy = pg_file(folder, name, original)
        pg_world.cli("wal-push", "emr", str(copy))  # identical: acknowledged again

        changed = bytearray(original)
        changed[len(changed) // 2] ^= 0xFF
        copy = pg_file(folder, name, bytes(changed))
        done = pg_world.cli("wal-push", "emr", str(copy), check=False)
        assert done.returncode == EXIT_CONFLICT
        assert name in done.stderr and "different content" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert open_archive(pg_world).fetch(name) == original
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_history_partial_and_backup_files_round_trip(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster()
    name = generate_segments(cluster, 1)[0]
    cluster.wait_archived(name)
    folder = make_pg_tempdir()
    try:
        history = b"1\t0/3000000\tno recovery target specified\n"
        files = {
            "00000002.history": history,
            f"{name}.partial": (cluster.datadir / "pg_wal" / name).read_bytes(),
            f"{name}.00000028.backup": b"START WAL LOCATION: 0/3000028\n",
        }
        for file_name, data in files.items():
            pg_world.cli("wal-push", "emr", str(pg_file(folder, file_name, data)))
            pg_world.cli("wal-push", "emr", str(folder / file_name))  # again: identical
            out = folder / f"restored-{file_name}"
            pg_world.cli("wal-fetch", "emr", file_name, str(out))
            assert out.read_bytes() == data
        assert "00000002.history" in open_archive(pg_world).names(2)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_fetch_of_a_missing_file_exits_1_and_writes_nothing(pg_world: PgWorld) -> None:
    pg_world.start_archiving_cluster()
    folder = make_pg_tempdir()
    try:
        dest = folder / "RECOVERYXLOG"
        done = pg_world.cli("wal-fetch", "emr", "0000000100000000000000F0", str(dest), check=False)
        assert done.returncode == EXIT_NOT_ARCHIVED
        done = pg_world.cli("wal-fetch", "emr", "00000009.history", str(dest), check=False)
        assert done.returncode == EXIT_NOT_ARCHIVED
        assert list(folder.iterdir()) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_fetch_of_a_damaged_object_or_unreachable_repository_exits_above_125(
    pg_world: PgWorld,
) -> None:
    cluster = pg_world.start_archiving_cluster()
    name = generate_segments(cluster, 1)[0]
    cluster.wait_archived(name)
    stored = object_path(pg_world, name)
    damaged = bytearray(stored.read_bytes())
    damaged[200] ^= 0x01
    stored.write_bytes(bytes(damaged))
    folder = make_pg_tempdir()
    try:
        dest = folder / "RECOVERYXLOG"
        done = pg_world.cli("wal-fetch", "emr", name, str(dest), check=False)
        assert done.returncode == EXIT_UNUSABLE and done.returncode > 125
        assert "damaged" in done.stderr
        assert not dest.exists()
        # No repository there at all: also not "the archive ends here".
        pg_world.config.write_text(
            pg_world.config.read_text().replace(str(pg_world.repo), str(folder / "gone"))
        )
        done = pg_world.cli("wal-fetch", "emr", name, str(dest), check=False)
        assert done.returncode == EXIT_UNUSABLE
        # Nor is a restore_command with a missing argument.
        done = pg_world.cli("wal-fetch", "emr", name, check=False)
        assert done.returncode == EXIT_UNUSABLE
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_segment_from_another_cluster_is_refused(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster()
    cluster.wait_archived(generate_segments(cluster, 1)[0])
    other = pg_world.new_cluster("other")
    other.initdb()  # never started: its first segment is enough
    first = "000000010000000000000001"
    before = open_archive(pg_world).fetch(first)
    done = pg_world.cli("wal-push", "emr", str(other.datadir / "pg_wal" / first), check=False)
    assert done.returncode == EXIT_CONFLICT
    assert "another cluster's archive_command points here" in done.stderr
    ours = str(cluster.scalar("SELECT system_identifier FROM pg_control_system()"))
    assert ours in done.stderr
    assert open_archive(pg_world).fetch(first) == before


def test_recovery_replays_the_archive_ends_cleanly_and_aborts_on_damage(
    pg_world: PgWorld,
) -> None:
    """restore_command's exit codes as PostgreSQL reads them: 1 ends recovery at the end of
    the archive; a damaged object aborts it instead of opening a cluster missing data."""
    cluster = pg_world.start_archiving_cluster()
    cluster.execute("CREATE TABLE visits AS SELECT generate_series(1, 1000) AS id")
    restored = pg_world.new_cluster("restored")
    run_as_postgres(
        [
            str(cluster.bindir / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-D",
            str(restored.datadir),
            "-X",
            "none",
        ]
    )
    cluster.execute("INSERT INTO visits SELECT generate_series(1001, 5000)")
    cluster.wait_archived(cluster.switch_wal())
    label = (restored.datadir / "backup_label").read_text()
    first = label.split("(file ")[1].split(")")[0]
    restored.configure(
        {
            "port": str(restored.port),
            "archive_mode": "off",
            "restore_command": f"'{MEDVAULT} --config {pg_world.config} wal-fetch emr %f %p'",
        }
    )
    (restored.datadir / "recovery.signal").touch()
    as_postgres(restored.datadir / "recovery.signal")

    good = open_archive(pg_world).fetch(first)
    assert good is not None
    stored = object_path(pg_world, first)
    damaged = bytearray(stored.read_bytes())
    damaged[-1] ^= 0xFF  # the tag's last byte, changed whatever it was
    stored.write_bytes(bytes(damaged))
    ctl = [
        str(restored.bindir / "pg_ctl"),
        "-D",
        str(restored.datadir),
        "-l",
        str(restored.logfile),
    ]
    assert run_as_postgres([*ctl, "-w", "-t", "60", "start"], check=False).returncode != 0
    assert "could not restore file" in restored.log()

    # Pushing the good copy again replaces the damaged one; recovery then runs to the end.
    folder = make_pg_tempdir()
    try:
        pg_world.cli("wal-push", "emr", str(pg_file(folder, first, good)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    restored.start()  # returns once consistent; replay goes on to the end of the archive
    deadline = time.monotonic() + 60
    while restored.scalar("SELECT pg_is_in_recovery()") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert restored.scalar("SELECT pg_is_in_recovery()") is False, restored.log()[-3000:]
    assert restored.scalar("SELECT count(*) FROM visits") == 5000


# -- asynchronous push ---------------------------------------------------------------------


def test_async_push_sends_the_backlog_in_one_call_and_acknowledges_the_rest_at_once(
    pg_world: PgWorld,
) -> None:
    pg_world.init_repository()
    pg_world.write_config()
    cluster = pg_world.cluster
    # Archiving on, but no command yet: the backlog builds up as .ready files.
    cluster.initdb(settings={"archive_mode": "on", "archive_command": "''"})
    cluster.start()
    generate_segments(cluster, 5)
    status_dir = cluster.datadir / "pg_wal" / "archive_status"
    ready = sorted(p.name.removesuffix(".ready") for p in status_dir.glob("*.ready"))
    assert len(ready) >= 5

    pg_wal = cluster.datadir / "pg_wal"
    pg_world.cli("wal-push", "--async", "emr", str(pg_wal / ready[0]))
    assert set(ready) <= set(open_archive(pg_world).names())
    spool = pg_wal / "medvault-spool"
    assert sorted(os.listdir(spool)) == ready[1:]
    assert all(json.loads((spool / n).read_text())["source"] == "emr" for n in ready[1:])

    # Later calls for those names never reach the repository: it is unreadable now.
    pg_world.repo.chmod(0)
    try:
        for name in ready[1:]:
            pg_world.cli("wal-push", "--async", "emr", str(pg_wal / name))
        done = pg_world.cli("wal-push", "--async", "emr", str(pg_wal / ready[0]), check=False)
        assert done.returncode != 0  # not spooled: this one needs the repository
    finally:
        pg_world.repo.chmod(stat.S_IRWXU)
    assert os.listdir(spool) == []

    # The archiver itself, with wal_async in the source's config.
    pg_world.write_config(extra_source="wal_async = true\n")
    cluster.execute(f"ALTER SYSTEM SET archive_command = {pg_world.archive_command()}")
    cluster.execute("SELECT pg_reload_conf()")
    more = generate_segments(cluster, 3)
    cluster.wait_archived(more[-1])
    assert cluster.scalar("SELECT failed_count FROM pg_stat_archiver") == 0
    assert set(ready + more) <= set(open_archive(pg_world).names())
    assert not list(status_dir.glob("*.ready"))


# -- wal-status ----------------------------------------------------------------------------


def test_wal_status_is_healthy_then_reports_a_gap(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster()
    names = generate_segments(cluster, 4)
    cluster.wait_archived(names[-1])
    report = json.loads(pg_world.cli("wal-status", "emr", "--json").stdout)
    assert report["healthy"] is True
    assert report["archiver"]["failed_count"] == 0
    assert report["archiver"]["archived_count"] >= 4
    assert report["archiver"]["last_archived_wal"] == names[-1]
    assert report["ready"] == 0
    (timeline,) = report["timelines"]
    assert timeline["timeline"] == 1 and timeline["missing"] == []
    assert timeline["last"] == names[-1] and timeline["count"] >= 4

    saved = object_path(pg_world, names[1]).read_bytes()
    object_path(pg_world, names[1]).unlink()
    done = pg_world.cli("wal-status", "emr", "--json", check=False)
    assert done.returncode == EXIT_MISSING
    report = json.loads(done.stdout)
    assert report["healthy"] is False
    assert report["timelines"][0]["missing"] == [names[1]]
    text = pg_world.cli("wal-status", "emr", check=False)
    assert text.returncode == EXIT_MISSING and names[1] in text.stdout

    # Back in one piece, but the server cannot be asked: that is said, with its own code.
    object_path(pg_world, names[1]).write_bytes(saved)
    cluster.stop()
    done = pg_world.cli("wal-status", "emr", check=False)
    assert done.returncode == EXIT_SERVER_UNREACHABLE
    assert "cannot connect" in done.stdout
