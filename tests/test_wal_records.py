"""Commit and abort times read from archived WAL agree with PostgreSQL's own pg_waldump."""

from __future__ import annotations

import random
import re
import subprocess
from datetime import datetime
from pathlib import Path

from tests.pgcluster import PgWorld

from medvault.backends import open_backend
from medvault.postgres.lsn import SEGMENT, parse_lsn, segment_start_lsn
from medvault.postgres.walrecords import TransactionEnd, transaction_ends
from medvault.repository.keys import Credential, read_keyfile
from medvault.repository.repo import Repository
from medvault.repository.wal import WalArchive

_WALDUMP_LINE = re.compile(
    r"len \(rec/tot\):\s*\d+/\s*(\d+), .*lsn: (\S+), prev \S+, desc: (COMMIT|ABORT) (\S+ \S+ UTC)"
)


def waldump_transaction_ends(
    world: PgWorld, folder: Path, names: list[str]
) -> list[tuple[int, int, str, str]]:
    """(LSN, record length, COMMIT or ABORT, time) of each, as pg_waldump reads them."""
    done = subprocess.run(
        [
            str(world.cluster.bindir / "pg_waldump"),
            "--rmgr=Transaction",
            "-p",
            str(folder),
            names[0],
            names[-1],
        ],
        capture_output=True,
        text=True,
        env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
    )
    found = []
    for line in done.stdout.splitlines():
        match = _WALDUMP_LINE.search(line)
        if match:
            length, lsn, kind, when = match.groups()
            found.append((parse_lsn(lsn), int(length), kind, when))
    return found


def waldump_time(end: TransactionEnd) -> str:
    """As pg_waldump prints it (timestamptz_to_str in UTC)."""
    return datetime.strftime(end.time, "%Y-%m-%d %H:%M:%S.%f UTC")


def test_transaction_ends_match_pg_waldump_across_pages_and_segments(
    pg_world: PgWorld, tmp_path: Path
) -> None:
    cluster = pg_world.start_archiving_cluster()
    cluster.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
    for round_ in range(3):
        cluster.execute(
            "INSERT INTO notes (body) SELECT repeat('x', 500) FROM generate_series(1, 20000)"
        )
        # A commit record carrying hundreds of dropped relations spans WAL pages.
        cluster.execute(
            "DO $$ BEGIN FOR i IN 1..300 LOOP "
            f"EXECUTE format('CREATE TABLE scratch_{round_}_%s (x int)', i); END LOOP; END $$"
        )
        cluster.execute(
            "DO $$ BEGIN FOR i IN 1..300 LOOP "
            f"EXECUTE format('DROP TABLE scratch_{round_}_%s', i); END LOOP; END $$"
        )
    with cluster.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO notes (body) VALUES ('rolled back')")
        conn.rollback()
    cluster.wait_archived(cluster.switch_wal())

    credential = Credential(keyfile_secret=read_keyfile(pg_world.key_file))
    archive = WalArchive(Repository.open(open_backend(str(pg_world.repo)), credential), "emr")
    names = [n for n in archive.names(1) if SEGMENT.match(n)]
    assert len(names) >= 3
    size = archive.cluster().segment_size  # type: ignore[union-attr]
    segments = {name: archive.fetch(name) for name in names}
    folder = tmp_path / "wal"
    folder.mkdir()
    for name, data in segments.items():
        assert data is not None
        (folder / name).write_bytes(data)

    ours: list[TransactionEnd] = []
    for i, name in enumerate(names):
        following = segments[names[i + 1]] if i + 1 < len(names) else None
        data = segments[name]
        assert data is not None
        ours += transaction_ends(data, segment_start_lsn(name, size), following)

    theirs = waldump_transaction_ends(pg_world, folder, names)
    assert any(kind == "ABORT" for _, _, kind, _ in theirs)
    assert max(length for _, length, _, _ in theirs) > 8192  # one spans pages
    assert [(end.lsn, waldump_time(end)) for end in ours] == [
        (lsn, when) for lsn, _, _, when in theirs
    ]
    # Damage anywhere in real WAL ends the reading early at worst; it never raises.
    rng = random.Random(7)
    real = segments[names[0]]
    assert real is not None
    for _ in range(10):
        damaged = bytearray(real)
        for _ in range(200):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        transaction_ends(bytes(damaged), segment_start_lsn(names[0], size), real)


def test_damaged_or_foreign_bytes_yield_no_transactions_and_never_raise() -> None:
    from tests.test_pg_wal import MiB, crafted_segment

    name = "000000010000000000000003"
    start = segment_start_lsn(name, MiB)
    valid_header = crafted_segment(name, 7_000_000_000_000_000_001, MiB)
    rng = random.Random(12)
    samples = [b"", b"\0" * 100, valid_header, valid_header[:5000]]
    for _ in range(200):
        body = bytearray(valid_header)
        for _ in range(rng.randrange(1, 64)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        samples.append(bytes(body))
        samples.append(rng.randbytes(rng.randrange(1, 20000)))
    for sample in samples:
        for end in transaction_ends(sample, start, rng.choice([None, sample])):
            assert end.lsn >= start
