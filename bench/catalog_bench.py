"""`runs` and `stats` over 100,000 run records, on SQLite and on PostgreSQL.

    .venv/bin/python bench/catalog_bench.py                  # both, 100,000 records
    .venv/bin/python bench/catalog_bench.py --records 20000 --backends sqlite

The records are spread over 60 days: 8 sources with hourly backups, checks, restores, drills
and wal-push failures, about 5% not ok. Each query is timed through its service function (the
catalog opened as a command opens it, the schema already at head), median of 5 after one
warm-up. PostgreSQL: the server on 127.0.0.1:5432 (user postgres, trust), a throwaway database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from medvault.catalog.store import Catalog
from medvault.service.history import RunsOptions, StatsOptions, runs, stats
from medvault.service.runs import Caller, RunRecord
from medvault.service.session import Session

SOURCES = [f"src{i}" for i in range(8)]
OPERATIONS = ["backup"] * 60 + ["check"] * 10 + ["restore"] * 5 + ["drill"] * 5 + ["wal-push"] * 20
PG_ADMIN = "host=127.0.0.1 user=postgres dbname=postgres"
TARGET_MS = 200.0


def records(count: int, until: dt.datetime, seed: int = 14) -> Iterator[dict[str, object]]:
    rng = random.Random(seed)
    span = 60 * 86400
    for _ in range(count):
        operation = rng.choice(OPERATIONS)
        started = until - dt.timedelta(seconds=rng.uniform(0, span))
        duration = rng.lognormvariate(3, 1.2)
        status = "ok" if rng.random() > 0.05 else rng.choice(["failed", "incomplete", "refused"])
        if operation == "wal-push":
            status = "failed"
        ended = started + dt.timedelta(seconds=duration)
        yield RunRecord(
            run_id=rng.randbytes(8).hex(),
            operation=operation,
            source=rng.choice(SOURCES),
            repository="s3://vault/clinic",
            started=started.isoformat(timespec="milliseconds"),
            ended=ended.isoformat(timespec="milliseconds"),
            duration_s=round(duration, 3),
            status=status,  # type: ignore[arg-type]
            bytes_read=rng.randrange(1 << 30),
            bytes_stored=rng.randrange(1 << 26),
            bytes_restored=rng.randrange(1 << 30) if operation == "restore" else 0,
            snapshots=(rng.randbytes(32).hex(),),
            error=None if status == "ok" else "path /srv/emr does not exist",
            user="postgres",
            host=f"db-{rng.randrange(4)}",
            shell="cli",
            details={"passed": status == "ok", "within_rto": rng.random() < 0.8}
            if operation == "drill"
            else {},
            encryption="AES-256-GCM",
            compliance_flags=("hipaa",),
        )._asdict()


def config(path: Path, url: str) -> Path:
    lines = ['[tier.gold]\nrpo = "1h"\n']
    for source in SOURCES:
        lines.append(
            f'[source.{source}]\nkind = "files"\npaths = ["/srv/{source}"]\ntier = "gold"\n'
        )
    lines.append(f'[catalog]\nurl = "{url}"\n')
    path.write_text("\n".join(lines))
    return path


def timed(label: str, call: Callable[[], object]) -> float:
    call()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    median = statistics.median(samples)
    verdict = "ok" if median < TARGET_MS else f"OVER {TARGET_MS:.0f} ms"
    print(f"  {label:<28} {median:8.1f} ms  ({verdict})")
    return median


class NoCredentials:
    def primary(self, settings: object) -> object:
        raise AssertionError("the catalog needs no repository")

    other = primary


def bench(url: str, count: int, workdir: Path) -> None:
    until = dt.datetime.now(dt.UTC)
    start = time.perf_counter()
    with Catalog.open(url) as catalog:
        catalog.add(records(count, until))
        if url.startswith("postgresql"):
            # What autovacuum does soon after a bulk insert: statistics for the planner, and
            # the visibility map that lets the covering indexes answer alone.
            with catalog.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "VACUUM ANALYZE runs"
                )
    print(f"  {'insert ' + format(count, ','):<28} {time.perf_counter() - start:8.1f} s")
    session = Session(
        credentials=NoCredentials(),  # type: ignore[arg-type]
        caller=Caller("bench", "cli", "bench"),
        config=str(config(workdir / "medvault.toml", url)),
    )
    # The queries alone (`--no-catch-up`): catching up opens a repository, a key derivation
    # that no catalog size changes.
    timed("runs (default limit 50)", lambda: runs(session, RunsOptions(catch_up=False)))
    timed("runs --failed", lambda: runs(session, RunsOptions(failed=True, catch_up=False)))
    timed(
        "runs --source --operation",
        lambda: runs(session, RunsOptions("src3", "backup", catch_up=False)),
    )
    timed("stats --days 30", lambda: stats(session, StatsOptions(days=30, catch_up=False)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medvault-catalog-bench-") as tmp:
        workdir = Path(tmp)
        if "sqlite" in args.backends:
            print("SQLite")
            bench(f"sqlite:///{workdir / 'catalog.db'}", args.records, workdir)
        if "postgresql" in args.backends:
            import psycopg

            name = f"medvault_catalog_bench_{os.getpid()}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            try:
                print("PostgreSQL")
                bench(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", args.records, workdir)
            finally:
                with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
