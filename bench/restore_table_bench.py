"""restore-table of one large table against a full PITR restore of the same cluster to the
same moment (issue 16's target: restore-table costs no more than the full PITR plus the table
copy).

    .venv/bin/python bench/restore_table_bench.py                 # scale 70 (~0.9 GB table)
    .venv/bin/python bench/restore_table_bench.py --scale 20 --rounds 2

One archiving cluster (`pgbench -i -s SCALE`: pgbench_accounts is the table; a second
database `archive` holds other data of about a quarter of its size), one full backup, then
`pgbench -T 15` of WAL, the moment, more WAL, all archived. Then rounds of A B:

  A  medvault restore-table emr public.pgbench_accounts --as-of MOMENT --into NEW
     (restore of the base backup into scratch, replay to the moment, promotion, the table
     copied into production with COPY, the scratch removed): wall time of the command, and
     its own split (recovery_s, copy_s)
  B  medvault pitr emr --pgdata DIR --target-time MOMENT --start --port P (restore, replay to
     the moment through restore_command = medvault wal-fetch, promotion): wall time of the
     command; stopping that server and removing DIR fall outside

Both run as postgres, as a DBA runs them; the page cache is flushed (sync) before each step.
The verdict: median(A) <= median(B) + median(A's copy_s). Raw samples go to
bench/results/restore-table-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# bench/ and tests/ (the throwaway-cluster harness) are plain directories, not packages.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pgcluster import (
    PgCluster,
    PgWorld,
    as_postgres,
    free_port,
    make_pg_tempdir,
    run_as_postgres,
    running_clusters,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def timed(world: PgWorld, *args: str) -> tuple[float, dict[str, Any]]:
    os.sync()
    began = time.monotonic()
    done = world.cli(*args, "--json", timeout=3600)
    took = time.monotonic() - began
    out = done.stdout
    return took, json.loads(out[out.index("{") :])


def prepare(world: PgWorld, scale: int) -> tuple[PgCluster, str, dict[str, Any]]:
    cluster = world.start_archiving_cluster(
        settings={"shared_buffers": "256MB", "max_wal_size": "2GB", "checkpoint_timeout": "5min"}
    )
    log(f"pgbench -i -s {scale}")
    cluster.pgbench("-i", "-s", str(scale), "-q")
    other_rows = scale * 25_000
    cluster.execute("CREATE DATABASE archive")
    cluster.execute(
        "CREATE TABLE letters AS SELECT g AS id, md5(g::text) || repeat('x', 60) AS body"
        f" FROM generate_series(1, {other_rows}) g",
        dbname="archive",
    )
    sizes = {
        "table_bytes": cluster.scalar("SELECT pg_table_size('pgbench_accounts')"),
        "cluster_bytes": int(cluster.scalar("SELECT sum(pg_database_size(oid)) FROM pg_database")),
        "rows": cluster.scalar("SELECT count(*) FROM pgbench_accounts"),
    }
    log(f"sizes {sizes}; full backup")
    world.cli("backup", "emr", "--type", "full", timeout=3600)
    cluster.pgbench("-T", "15", "-c", "2")
    cluster.switch_wal()
    moment = str(cluster.scalar("SELECT clock_timestamp()").isoformat())
    time.sleep(0.5)
    cluster.pgbench("-T", "5", "-c", "2")
    cluster.wait_archived(cluster.switch_wal(), timeout=600)
    return cluster, moment, sizes


def run_a(world: PgWorld, cluster: PgCluster, moment: str, n: int) -> dict[str, Any]:
    scratch = world.base / "scratch"
    scratch.mkdir(exist_ok=True)
    as_postgres(scratch)
    name = f"accounts_then_{n}"
    wall, report = timed(
        world,
        "restore-table",
        "emr",
        "public.pgbench_accounts",
        "--as-of",
        moment,
        "--into",
        name,
        "--scratch",
        str(scratch),
    )
    assert not list(scratch.iterdir()), "restore-table removed its scratch"
    cluster.execute(f"DROP TABLE {name}")
    return {
        "wall_s": round(wall, 3),
        "recovery_s": report["recovery_s"],
        "copy_s": report["copy_s"],
        "rows": report["rows"],
        "reached": report["reached"]["time"],
    }


def run_b(world: PgWorld, moment: str, n: int) -> dict[str, Any]:
    pgdata = world.base / f"pitr-{n}"
    port = free_port()
    restored = PgCluster(pgdata, port)
    world.clusters.append(restored)
    wall, report = timed(
        world,
        "pitr",
        "emr",
        "--pgdata",
        str(pgdata),
        "--target-time",
        moment,
        "--start",
        "--port",
        str(port),
    )
    restored.stop("immediate")
    shutil.rmtree(pgdata)
    return {"wall_s": round(wall, 3), "reached": (report.get("reached") or {}).get("time")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=70)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    base = make_pg_tempdir("medvault-bench-table-")
    samples: dict[str, list[dict[str, Any]]] = {"restore_table": [], "pitr": []}
    try:
        with running_clusters() as clusters:
            world = PgWorld(base, clusters)
            cluster, moment, sizes = prepare(world, args.scale)
            for n in range(args.rounds):
                a = run_a(world, cluster, moment, n)
                log(f"round {n + 1} A restore-table: {a}")
                samples["restore_table"].append(a)
                b = run_b(world, moment, n)
                log(f"round {n + 1} B pitr: {b}")
                samples["pitr"].append(b)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def median(kind: str, key: str) -> float:
        return round(statistics.median(s[key] for s in samples[kind]), 2)

    a, b = median("restore_table", "wall_s"), median("pitr", "wall_s")
    copy = median("restore_table", "copy_s")
    summary = {
        "scale": args.scale,
        "rounds": args.rounds,
        **sizes,
        "restore_table_s": a,
        "restore_table_recovery_s": median("restore_table", "recovery_s"),
        "restore_table_copy_s": copy,
        "pitr_s": b,
        "within_target": a <= b + copy,
        "load": os.getloadavg(),
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"restore-table-{stamp}.json"
    out.write_text(json.dumps({"summary": summary, "samples": samples}, indent=2))
    print(json.dumps(summary, indent=2))
    log(f"written {out}")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root: the clusters and medvault run as the postgres user (runuser)")
    run_as_postgres(["true"])
    main()
