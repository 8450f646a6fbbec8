"""medvault against pgBackRest on the same PostgreSQL cluster, in one run (`make bench-pg`).

One throwaway cluster (data checksums on, `pgbench -i -s SCALE`, archive_mode on). Before each
tool's turn its own archive_command is switched in (ALTER SYSTEM + pg_reload_conf, then the
archiver's backlog is drained), so both tools see the same cluster state:

  physical  per round, fresh repositories: full A, full B, `pgbench -T 30` (archive_command
            `true`), incremental A, incremental B, restore A, restore B
            (--recovery-target immediate); round 1 compares the two restored data directories
            and starts each once
  logical   `pg_dump -Fc > file` against `medvault backup emr --logical`
  wal       single synchronous pushes of the same fresh 16 MiB segments, one process each
  load      `pgbench -c 4 -T DURATION` with each tool archiving (sync, then async): backlog
            (.ready files) sampled every second, pg_stat_archiver failures, segments/s
  drain     a backlog of N segments built with archiving paused, then timed while each tool
            archives it: what an archiver sustains (segments/s), sync and async
  checksums full backups of the cluster and of a copy with checksums disabled (same bytes)

Tools alternate A B / B A across rounds; the table quotes medians. Raw samples go to
bench/results/pg-<timestamp>.json. See bench/README.md, section "PostgreSQL vs pgBackRest".
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pg_tools
import psycopg
from pg_tools import MedvaultPg, PgBackRest, pg_dir, run_pg_measured
from psycopg import sql
from tools import Measured, ToolError

from pgcluster import (
    MEDVAULT,
    PgCluster,
    free_port,
    make_pg_tempdir,
    run_as_postgres,
    running_clusters,
)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PHASES = ("physical", "logical", "wal", "load", "drain", "checksums", "drill")
MB = 1_000_000
MiB = 1024 * 1024
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
FULL_RATIO, INCR_RATIO, RESTORE_RATIO, LOGICAL_RATIO = 1.0, 1.0, 1.0, 1.15
DRILL_RATIO = 1.3
WAL_PUSH_MS = 150
Tool = MedvaultPg | PgBackRest
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def settle() -> None:
    """Flush dirty pages so no step pays for the previous one's writeback."""
    os.sync()


def record(sample: dict[str, Any], key: str, result: Measured) -> None:
    sample[f"{key}_s"] = round(result.seconds, 3)
    sample[f"{key}_cpu_s"] = round(result.user_s + result.sys_s, 3)
    sample[f"{key}_rss_kb"] = result.rss_kb


def alternate(items: list[T], index: int) -> list[T]:
    """A B in even rounds, B A in odd ones: drift on the machine falls on both."""
    return items if index % 2 == 0 else list(reversed(items))


# -- the cluster ---------------------------------------------------------------------------


def set_archive_command(cluster: PgCluster, command: str) -> None:
    """Switch the archiver to command; returns once new sessions see it."""
    with cluster.connect() as conn:
        conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command)))
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while cluster.scalar("SHOW archive_command") != command and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the archiver handles its SIGHUP between files


def ready_count(cluster: PgCluster) -> int:
    status = cluster.datadir / "pg_wal" / "archive_status"
    return sum(1 for name in os.listdir(status) if name.endswith(".ready"))


def wait_drained(cluster: PgCluster, timeout: float = 300) -> float:
    """Seconds until no segment waits for the archiver; ToolError when it does not drain."""
    started = time.monotonic()
    while ready_count(cluster) > 0:
        if time.monotonic() - started > timeout:
            raise ToolError(f"archiver backlog of {ready_count(cluster)} did not drain")
        time.sleep(0.1)
    return time.monotonic() - started


def use_archiver(cluster: PgCluster, command: str) -> None:
    set_archive_command(cluster, command)
    cluster.execute("SELECT pg_switch_wal()")  # the archiver wakes up on the new command now
    wait_drained(cluster)


def pgbench(cluster: PgCluster, *args: str, timeout: float = 7200) -> dict[str, Any]:
    done = run_as_postgres(
        [
            str(cluster.bindir / "pgbench"),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            *args,
            "postgres",
        ],
        timeout=timeout,
    )
    tps = re.search(r"tps = ([0-9.]+)", done.stdout)
    tx = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    return {
        "tps": float(tps.group(1)) if tps else None,
        "transactions": int(tx.group(1)) if tx else None,
    }


def make_wal(cluster: PgCluster) -> None:
    """A burst of pgbench WAL; the checkpoint first makes its updates log full pages, as
    they do on a cluster bigger than its cache (so small --scale runs fill segments too)."""
    cluster.execute("CHECKPOINT")
    pgbench(cluster, "-c", "4", "-j", "2", "-T", "3")


def fingerprint(cluster: PgCluster) -> list[Any]:
    """What the restored clusters must hold: pgbench's balances and history."""
    row = cluster.query(
        "SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT sum(abalance) FROM "
        "pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches), "
        "(SELECT count(*) FROM pgbench_history)"
    )[0]
    return [int(v or 0) for v in row]


def warm_cache(path: Path) -> int:
    """Read every file once so both tools start from the same (hot) page cache."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError), open(os.path.join(dirpath, name), "rb") as f:
                while chunk := f.read(4 * MiB):
                    total += len(chunk)
    return total


def make_cluster(
    base: Path, name: str, clusters: list[PgCluster], *, checksums: bool, scale: int
) -> PgCluster:
    cluster = PgCluster(base / name)
    clusters.append(cluster)
    cluster.initdb(
        checksums=checksums,
        settings={
            "archive_mode": "on",
            "archive_command": "'true'",
            "shared_buffers": "256MB",
            "max_wal_size": "4GB",
            "checkpoint_timeout": "30min",
            "log_checkpoints": "off",
        },
    )
    cluster.start()
    log(f"pgbench -i -s {scale} on {name} (data checksums {'on' if checksums else 'off'})")
    started = time.monotonic()
    pgbench(cluster, "-i", "-q", "-s", str(scale))
    cluster.execute("CHECKPOINT")
    size = int(cluster.scalar("SELECT pg_database_size('postgres')"))
    log(f"  initialised {size / MB:.0f} MB in {time.monotonic() - started:.0f} s")
    return cluster


# -- physical backups and restores --------------------------------------------------------


def restored_files(root: Path) -> dict[str, int]:
    """Relative path -> size of what a restore wrote, minus what recovery set-up changes."""
    skip_names = {
        "postgresql.auto.conf",
        "recovery.signal",
        "standby.signal",
        "backup_label",
        "backup_label.old",
        "tablespace_map",
        "postmaster.pid",
        "postmaster.opts",
        "backup_manifest",
    }
    found = {}
    for dirpath, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir.split(os.sep)[0] in {"pg_wal", "log"}:
            dirs.clear()
            continue
        for name in files:
            if name in skip_names or name.startswith("pg_internal.init"):
                continue
            rel = os.path.normpath(os.path.join(rel_dir, name))
            found[rel] = os.lstat(os.path.join(dirpath, name)).st_size
    return found


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def compare_restores(a: Path, b: Path) -> dict[str, Any]:
    """File lists and bytes of two restored data directories. Relation files may differ a
    little: the backups were minutes apart (hint bits, autovacuum, pg_control)."""
    files_a, files_b = restored_files(a), restored_files(b)
    common = sorted(set(files_a) & set(files_b))
    same_size = [r for r in common if files_a[r] == files_b[r]]
    relation_files = [r for r in same_size if r.startswith(("base/", "global/"))]
    identical = [r for r in relation_files if sha256(a / r) == sha256(b / r)]
    differing = sorted(set(relation_files) - set(identical))
    return {
        "only_in_medvault": sorted(set(files_a) - set(files_b))[:20],
        "only_in_pgbackrest": sorted(set(files_b) - set(files_a))[:20],
        "files_common": len(common),
        "size_differs": [r for r in common if files_a[r] != files_b[r]][:20],
        "relation_files_compared": len(relation_files),
        "relation_files_identical": len(identical),
        "relation_bytes_identical": sum(files_a[r] for r in identical),
        "relation_files_differing": differing[:20],
    }


@contextlib.contextmanager
def promoted_copy(
    base: Path, pgdata: Path, clusters: list[PgCluster], timeout: float = 600
) -> Iterator[tuple[PgCluster, float]]:
    """Start a restored data directory (archiving off, own port); yield it once promoted,
    with the seconds from pg_ctl start to a promoted server answering; always stopped."""
    cluster = PgCluster(pgdata, port=free_port())
    clusters.append(cluster)
    cluster.logfile = base / f"{pgdata.name}.log"
    cluster.configure({"port": str(cluster.port), "archive_mode": "off"})
    started = time.perf_counter()
    try:
        cluster.start()
        deadline = time.monotonic() + timeout
        while cluster.scalar("SELECT pg_is_in_recovery()"):
            if time.monotonic() > deadline:
                raise ToolError(f"recovery did not finish within {timeout:.0f} s")
            time.sleep(0.05)
        yield cluster, time.perf_counter() - started
    finally:
        cluster.stop("immediate")
        clusters.remove(cluster)


def start_restored(
    base: Path, pgdata: Path, clusters: list[PgCluster], expected: list[Any]
) -> dict[str, Any]:
    """Start a restored data directory, wait for promotion, compare data with the source."""
    try:
        with promoted_copy(base, pgdata, clusters, timeout=300) as (cluster, seconds):
            got = fingerprint(cluster)
            return {
                "started": True,
                "recovery_s": round(seconds, 1),
                "data_matches": got == expected,
                "fingerprint": got,
            }
    except (AssertionError, ToolError, psycopg.Error) as exc:
        server_log = base / f"{pgdata.name}.log"  # where promoted_copy's cluster logs
        text = server_log.read_text(errors="replace") if server_log.exists() else ""
        return {"started": False, "error": str(exc)[-600:], "log": text[-1500:]}


def physical_phase(
    args: argparse.Namespace, base: Path, cluster: PgCluster, clusters: list[PgCluster]
) -> dict[str, list[dict[str, Any]]]:
    samples: dict[str, list[dict[str, Any]]] = {"medvault": [], "pgbackrest": []}
    for round_no in range(args.rounds):
        tools: list[Tool] = [
            MedvaultPg(base / f"mv-r{round_no + 1}", cluster, shim=args.shim),
            PgBackRest(base / f"br-r{round_no + 1}", cluster, cipher=args.pgbackrest_cipher),
        ]
        order = alternate(tools, round_no)
        log(f"physical round {round_no + 1}/{args.rounds}: {' '.join(t.name for t in order)}")
        load1 = round(os.getloadavg()[0], 2)  # other load on the machine skews both tools
        current: dict[str, dict[str, Any]] = {
            t.name: {"round": round_no + 1, "load1_at_start": load1} for t in tools
        }
        try:
            for tool in tools:
                tool.init()
            warm_cache(cluster.datadir)
            for step, backup_type in (("full", "full"), ("incr", "incremental")):
                if step == "incr":
                    set_archive_command(cluster, "true")
                    bench = pgbench(cluster, "-T", str(args.incr_duration))
                    for tool in tools:
                        current[tool.name]["workload"] = bench
                    log(f"  pgbench -T {args.incr_duration}: {bench['tps']} tps")
                for tool in order:
                    sample = current[tool.name]
                    if "error" in sample:
                        continue
                    use_archiver(cluster, tool.archive_command())
                    settle()
                    try:
                        result, facts = tool.backup(backup_type)
                    except ToolError as exc:
                        sample["error"] = f"{step}: {exc}"
                        log(f"  {tool.name}: {step} FAILED: {exc}")
                        continue
                    record(sample, step, result)
                    sample[f"{step}_facts"] = facts
                    sample[f"repo_{step}_bytes"] = tool.repo_bytes()
                    log(
                        f"  {tool.name}: {step} {result.seconds:.2f} s, "
                        f"{result.rss_kb / 1024:.0f} MiB RSS"
                    )
            set_archive_command(cluster, "true")
            expected = fingerprint(cluster)
            targets: dict[str, Path] = {}
            for tool in order:
                sample = current[tool.name]
                if "error" in sample:
                    continue
                target = pg_dir(base / f"restore-{tool.name}")
                settle()
                try:
                    result = tool.restore(target)
                except ToolError as exc:
                    sample["restore_error"] = str(exc)
                    log(f"  {tool.name}: restore FAILED: {exc}")
                    shutil.rmtree(target, ignore_errors=True)
                    continue
                record(sample, "restore", result)
                flush_started = time.perf_counter()
                os.sync()
                flush = time.perf_counter() - flush_started
                sample["restore_synced_s"] = round(result.seconds + flush, 3)
                targets[tool.name] = target
                log(f"  {tool.name}: restore {result.seconds:.2f} s (+{flush:.2f} s to sync)")
            if round_no == 0 or args.verify_all_rounds:
                if len(targets) == 2:
                    comparison = compare_restores(targets["medvault"], targets["pgbackrest"])
                    current["medvault"]["restore_comparison"] = comparison
                    log(
                        f"  restored files: {comparison['files_common']} in both, only "
                        f"medvault {len(comparison['only_in_medvault'])}, only pgBackRest "
                        f"{len(comparison['only_in_pgbackrest'])}; relation files identical "
                        f"{comparison['relation_files_identical']}/"
                        f"{comparison['relation_files_compared']}"
                    )
                for name, target in targets.items():
                    check = start_restored(base, target, clusters, expected)
                    current[name]["restore_start"] = check
                    log(
                        f"  {name}: restored cluster started={check['started']} "
                        f"data matches={check.get('data_matches')} "
                        f"{check.get('error', '')[:200]}"
                    )
            for target in targets.values():
                shutil.rmtree(target, ignore_errors=True)
        finally:
            for tool in tools:
                tool.cleanup()
            for name in ("restore-medvault", "restore-pgbackrest"):
                shutil.rmtree(base / name, ignore_errors=True)
        for tool in tools:
            samples[tool.name].append(current[tool.name])
    return samples


# -- restore drills --------------------------------------------------------------------------


def drill_phase(
    args: argparse.Namespace, base: Path, cluster: PgCluster, clusters: list[PgCluster]
) -> dict[str, list[dict[str, Any]]]:
    """medvault's whole drill (restore, replay to the end of the backup, every table counted,
    amcheck on every B-tree index) against pgBackRest's restore --type=immediate plus the
    restored server's start-up to promotion, on full backups of the same cluster."""
    samples: dict[str, list[dict[str, Any]]] = {"medvault": [], "pgbackrest": []}
    mv = MedvaultPg(base / "mv-drill", cluster, shim=args.shim)
    br = PgBackRest(base / "br-drill", cluster, cipher=args.pgbackrest_cipher)
    try:
        for tool in (mv, br):
            tool.init()
            use_archiver(cluster, tool.archive_command())
            settle()
            tool.backup("full")
            log(f"  {tool.name}: full backup for the drills taken")
        set_archive_command(cluster, "true")
        for round_no in range(args.rounds):
            order = alternate([mv, br], round_no)
            log(f"drill round {round_no + 1}/{args.rounds}: {' '.join(t.name for t in order)}")
            for tool in order:
                sample: dict[str, Any] = {"round": round_no + 1}
                settle()
                if tool is mv:
                    scratch = pg_dir(base / "drill-scratch")
                    result = mv.run("drill", pg_tools.SOURCE, "--scratch", str(scratch), "--json")
                    drill = json.loads(result.stdout)
                    if not drill["ok"]:
                        raise ToolError(f"medvault drill failed: {drill}")
                    record(sample, "drill_wall", result)
                    # pgBackRest's side is timed up to a promoted server: its stop and the
                    # removal of its restored copy fall outside, so the drill's clean-up too.
                    sample["cleanup_s"] = drill["cleanup_s"]
                    sample["drill_s"] = round(result.seconds - drill["cleanup_s"], 3)
                    sample["rto_s"] = drill["rto_s"]
                    sample["checks"] = {c["name"]: c["detail"] for c in drill["checks"]}
                    sample["steps_s"] = {c["name"]: c.get("seconds") for c in drill["checks"]}
                    log(
                        f"  medvault: drill {sample['drill_s']:.2f} s (+{drill['cleanup_s']:.2f} "
                        "s clean-up)"
                    )
                else:
                    target = pg_dir(base / "restore-pgbackrest")
                    try:
                        restored = br.restore(target)
                        record(sample, "restore", restored)
                        os.sync()
                        with promoted_copy(base, target, clusters) as (_, startup):
                            sample["startup_s"] = round(startup, 3)
                        sample["drill_s"] = round(restored.seconds + sample["startup_s"], 3)
                    finally:
                        shutil.rmtree(target, ignore_errors=True)
                    log(
                        f"  pgbackrest: restore {restored.seconds:.2f} s + start-up "
                        f"{sample['startup_s']:.2f} s"
                    )
                samples[tool.name].append(sample)
    finally:
        mv.cleanup()
        br.cleanup()
        shutil.rmtree(base / "drill-scratch", ignore_errors=True)
    return samples


# -- logical -------------------------------------------------------------------------------


def logical_phase(
    args: argparse.Namespace, base: Path, cluster: PgCluster
) -> dict[str, list[dict[str, Any]]]:
    samples: dict[str, list[dict[str, Any]]] = {"medvault": [], "pg_dump": []}
    dump = base / "dump.fc"
    pg_dump = (
        f"{cluster.bindir / 'pg_dump'} -Fc -h 127.0.0.1 -p {cluster.port} -d postgres > {dump}"
    )
    for round_no in range(args.rounds):
        mv = MedvaultPg(base / f"mv-logical-r{round_no + 1}", cluster, shim=args.shim)
        try:
            mv.init()
            names = ["medvault", "pg_dump"] if round_no % 2 == 0 else ["pg_dump", "medvault"]
            for name in names:
                sample: dict[str, Any] = {"round": round_no + 1}
                settle()
                try:
                    if name == "pg_dump":
                        result = run_pg_measured([pg_dump], base, shell=True)
                        sample["dump_bytes"] = dump.stat().st_size
                        dump.unlink()
                    else:
                        result, facts = mv.backup_logical("postgres")
                        sample["facts"] = facts
                        sample["repo_bytes"] = mv.repo_bytes()
                    record(sample, "logical", result)
                    log(f"  {name}: logical {result.seconds:.2f} s")
                except ToolError as exc:
                    sample["error"] = str(exc)
                    log(f"  {name}: logical FAILED: {exc}")
                samples[name].append(sample)
        finally:
            mv.cleanup()
            dump.unlink(missing_ok=True)
    return samples


# -- WAL -----------------------------------------------------------------------------------


def stage_segments(cluster: PgCluster, stage: Path, count: int) -> list[Path]:
    """Real, full 16 MiB segments of this cluster that neither archive holds yet: copies
    made by a `cp` archive_command while pgbench runs."""
    set_archive_command(cluster, f"test ! -f {stage}/%f && cp %p {stage}/%f")
    deadline = time.monotonic() + 600
    while True:
        have = sorted(p for p in stage.iterdir() if SEGMENT_RE.match(p.name))
        if len(have) >= count or time.monotonic() > deadline:
            break
        make_wal(cluster)
        wait_drained(cluster)
    set_archive_command(cluster, "true")
    return have[:count]


def wal_push_phase(
    args: argparse.Namespace, base: Path, cluster: PgCluster
) -> dict[str, list[dict[str, Any]]]:
    stage = pg_dir(base / "walstage")
    tools: list[Tool] = [
        MedvaultPg(base / "mv-wal", cluster, shim=args.shim),
        PgBackRest(base / "br-wal", cluster, cipher=args.pgbackrest_cipher),
    ]
    samples: dict[str, list[dict[str, Any]]] = {t.name: [] for t in tools}
    try:
        for tool in tools:
            tool.init()
        segments = stage_segments(cluster, stage, args.wal_pushes + 1)
        log(f"wal-push: {len(segments)} segments staged (first one warms up each tool)")
        for tool in tools:  # the first push creates each archive's bookkeeping
            tool.wal_push(segments[0])
        for index, segment in enumerate(segments[1:]):
            for tool in alternate(tools, index):
                try:
                    result = tool.wal_push(segment)
                except ToolError as exc:
                    samples[tool.name].append({"segment": segment.name, "error": str(exc)})
                    continue
                samples[tool.name].append(
                    {
                        "segment": segment.name,
                        "push_ms": round(result.seconds * 1000, 1),
                        "cpu_ms": round((result.user_s + result.sys_s) * 1000, 1),
                        "rss_kb": result.rss_kb,
                    }
                )
        for tool in tools:
            ms = [s["push_ms"] for s in samples[tool.name] if "push_ms" in s]
            if ms:
                cpu = [s["cpu_ms"] for s in samples[tool.name] if "cpu_ms" in s]
                log(
                    f"  {tool.name}: wal-push median {statistics.median(ms):.0f} ms wall, "
                    f"{statistics.median(cpu):.0f} ms CPU ({ms})"
                )
    finally:
        for tool in tools:
            tool.cleanup()
        shutil.rmtree(stage, ignore_errors=True)
    return samples


class ArchiverSampler:
    """Every `interval` seconds: .ready files and pg_stat_archiver's counters."""

    def __init__(self, cluster: PgCluster, interval: float = 1.0) -> None:
        self.cluster = cluster
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        with self.cluster.connect() as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "SELECT archived_count, failed_count FROM pg_stat_archiver"
                ).fetchone()
                assert row is not None
                self.samples.append(
                    {
                        "t": round(time.monotonic() - self._t0, 2),
                        "ready": ready_count(self.cluster),
                        "archived": int(row[0]),
                        "failed": int(row[1]),
                    }
                )
                self._stop.wait(self.interval)

    def __enter__(self) -> ArchiverSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> float:
        return time.monotonic() - self._t0


def load_run(
    cluster: PgCluster, tool: Tool, async_: bool, duration: int, clients: int
) -> dict[str, Any]:
    """pgbench with tool archiving: does the backlog stay flat, any failure, segments/s."""
    use_archiver(cluster, tool.archive_command(async_))
    # Every run starts right after a checkpoint: the first change to each page after one
    # logs the whole page, so this is what makes the runs' WAL volumes comparable.
    cluster.execute("CHECKPOINT")
    cluster.execute("SELECT pg_stat_reset_shared('archiver')")
    load1 = os.getloadavg()[0]
    with ArchiverSampler(cluster) as sampler:
        bench = pgbench(cluster, "-c", str(clients), "-j", "2", "-T", str(duration))
        load_end = sampler.now()
        try:
            drain_s = round(wait_drained(cluster, timeout=600), 1)
        except ToolError:
            drain_s = None
        time.sleep(1.2)
    during = [s for s in sampler.samples if s["t"] <= load_end]
    last = sampler.samples[-1]
    third = max(1, len(during) // 3)
    first_mean = statistics.mean(s["ready"] for s in during[:third])
    last_mean = statistics.mean(s["ready"] for s in during[-third:])
    archived_in_load = during[-1]["archived"] - during[0]["archived"]
    ready_at_end = during[-1]["ready"]
    growing = last_mean - first_mean > 2 and ready_at_end > 3
    result = {
        "tool": tool.name,
        "mode": "async" if async_ else "sync",
        "duration_s": duration,
        "load1_at_start": round(load1, 2),
        "pgbench": bench,
        "max_backlog": max(s["ready"] for s in sampler.samples),
        "backlog_at_load_end": ready_at_end,
        "backlog_mean_first_third": round(first_mean, 2),
        "backlog_mean_last_third": round(last_mean, 2),
        "growing": growing,
        "failures": last["failed"],
        "archived_total": last["archived"],
        "segments_per_s_during_load": round(archived_in_load / max(load_end, 1e-9), 2),
        "drain_after_load_s": drain_s,
        "keeps_up": last["failed"] == 0 and not growing and drain_s is not None,
        "samples": [(s["t"], s["ready"], s["archived"], s["failed"]) for s in sampler.samples],
    }
    log(
        f"  {tool.name} {result['mode']}: {bench['tps']} tps, archived {last['archived']} "
        f"({result['segments_per_s_during_load']}/s), max backlog {result['max_backlog']}, "
        f"at end {ready_at_end}, drained in {drain_s} s, failures {last['failed']}"
    )
    return result


def drain_run(cluster: PgCluster, tool: Tool, async_: bool, backlog: int) -> dict[str, Any]:
    """Pause archiving, let `backlog` segments pile up, then time the tool clearing them."""
    use_archiver(cluster, "true")
    set_archive_command(cluster, "")  # PostgreSQL keeps .ready files while it is empty
    while ready_count(cluster) < backlog:
        make_wal(cluster)
    queued = ready_count(cluster)
    cluster.execute("SELECT pg_stat_reset_shared('archiver')")
    load1 = os.getloadavg()[0]
    settle()
    started = time.monotonic()
    set_archive_command(cluster, tool.archive_command(async_))
    try:
        wait_drained(cluster, timeout=900)
        seconds: float | None = time.monotonic() - started
    except ToolError:
        seconds = None
    row = cluster.query("SELECT archived_count, failed_count FROM pg_stat_archiver")[0]
    result = {
        "tool": tool.name,
        "mode": "async" if async_ else "sync",
        "queued": queued,
        "load1_at_start": round(load1, 2),
        "archived": int(row[0]),
        "failures": int(row[1]),
        "seconds": None if seconds is None else round(seconds, 2),
        "segments_per_s": None if seconds is None else round(queued / seconds, 2),
    }
    log(
        f"  {tool.name} {result['mode']}: {queued} queued segments archived in "
        f"{result['seconds']} s = {result['segments_per_s']}/s, failures {row[1]}"
    )
    return result


def wal_stream_phase(
    args: argparse.Namespace, base: Path, cluster: PgCluster, phase: str
) -> list[dict[str, Any]]:
    """The `load` or `drain` phase: each tool, sync then async, in alternating order."""
    tools: list[Tool] = [
        MedvaultPg(base / f"mv-{phase}", cluster, shim=args.shim),
        PgBackRest(base / f"br-{phase}", cluster, cipher=args.pgbackrest_cipher),
    ]
    out = []
    try:
        for tool in tools:
            tool.init()
        for index, async_ in enumerate((False, True)):
            for tool in alternate(tools, index):
                try:
                    if phase == "load":
                        out.append(load_run(cluster, tool, async_, args.wal_duration, 4))
                    else:
                        out.append(drain_run(cluster, tool, async_, args.backlog))
                except (ToolError, AssertionError) as exc:
                    mode = "async" if async_ else "sync"
                    out.append({"tool": tool.name, "mode": mode, "error": str(exc)[-500:]})
                    log(f"  {tool.name} {mode}: FAILED: {exc}")
    finally:
        with contextlib.suppress(Exception):
            use_archiver(cluster, "true")
        for tool in tools:
            tool.cleanup()
    return out


# -- page checksums ------------------------------------------------------------------------


def checksums_phase(
    args: argparse.Namespace, base: Path, cluster: PgCluster, clusters: list[PgCluster]
) -> dict[str, list[dict[str, Any]]]:
    """Full backups of the cluster and of a byte-identical copy with checksums disabled."""
    use_archiver(cluster, "true")
    cluster.execute("CHECKPOINT")
    cluster.stop()
    plain = PgCluster(base / "nochecksums", port=free_port())
    run_as_postgres(["cp", "-a", str(cluster.datadir), str(plain.datadir)], timeout=1800)
    run_as_postgres([str(plain.bindir / "pg_checksums"), "--disable", "-D", str(plain.datadir)])
    plain.configure({"port": str(plain.port)})
    clusters.append(plain)
    cluster.start()
    plain.start()
    samples: dict[str, list[dict[str, Any]]] = {}
    try:
        for round_no in range(args.rounds):
            pairs = [(cluster, "checksums"), (plain, "no_checksums")]
            for target, label in alternate(pairs, round_no):
                tools: list[Tool] = [
                    MedvaultPg(base / f"mv-{label}", target, shim=args.shim),
                    PgBackRest(base / f"br-{label}", target, cipher=args.pgbackrest_cipher),
                ]
                warm_cache(target.datadir)
                for tool in alternate(tools, round_no):
                    key = f"{tool.name}/{label}"
                    sample: dict[str, Any] = {"round": round_no + 1}
                    try:
                        tool.init()
                        use_archiver(target, tool.archive_command())
                        settle()
                        result, facts = tool.backup("full")
                        record(sample, "full", result)
                        sample["facts"] = facts
                        log(f"  {key}: full {result.seconds:.2f} s")
                    except ToolError as exc:
                        sample["error"] = str(exc)
                        log(f"  {key}: FAILED: {exc}")
                    finally:
                        with contextlib.suppress(Exception):
                            use_archiver(target, "true")
                        tool.cleanup()
                    samples.setdefault(key, []).append(sample)
    finally:
        plain.stop("immediate")
        clusters.remove(plain)
        shutil.rmtree(plain.datadir, ignore_errors=True)
    return samples


# -- reporting -----------------------------------------------------------------------------


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def med_key(samples: list[dict[str, Any]], key: str) -> float | None:
    return med([s[key] for s in samples if s.get(key) is not None])


def run_profile(base: Path, cluster: PgCluster, shim: bool) -> str:
    """cProfile (all threads, merged) of one medvault full backup and of its restore."""
    mv = MedvaultPg(base / "mv-profile", cluster, shim=shim)
    out = base / "profile.out"
    target = base / "restore-profile"
    report = []
    try:
        mv.init()
        use_archiver(cluster, mv.archive_command())
        commands = {
            "full backup": ["backup", pg_tools.SOURCE, "--type", "full", "--json"],
            "restore": [
                "restore",
                f"latest:{pg_tools.SOURCE}",
                "--pgdata",
                str(target),
                "--recovery-target",
                "immediate",
            ],
        }
        for what, args in commands.items():
            if what == "restore":
                pg_dir(target)
            profiler = [pg_tools.PYTHON, str(BENCH_DIR / "pg_tools.py"), "profile", str(out)]
            result = run_pg_measured([*profiler, MEDVAULT, "--config", str(mv.config), *args], base)
            import pstats
            from io import StringIO

            text = StringIO()
            stats = pstats.Stats(str(out), stream=text)
            stats.sort_stats("tottime").print_stats(25)
            report.append(
                f"--- medvault {what} under cProfile: {result.seconds:.1f} s wall, "
                f"{result.user_s + result.sys_s:.1f} s CPU (profiling slows it down); "
                f"all threads, by own time ---\n" + text.getvalue()
            )
        return "\n".join(report)
    finally:
        with contextlib.suppress(Exception):
            use_archiver(cluster, "true")
        mv.cleanup()
        out.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)


def verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "MISS", None: "n/a"}[ok]


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def build_table(results: dict[str, Any]) -> tuple[list[list[str]], dict[str, Any]]:
    rows: list[list[str]] = []
    targets: dict[str, Any] = {}

    def row(
        label: str,
        mine: float | None,
        theirs: float | None,
        target: str = "",
        ok: bool | None = None,
        digits: int = 2,
        ratio: float | None = None,
        show_ratio: bool = True,
    ) -> None:
        if ratio is None and mine is not None and theirs and show_ratio:
            ratio = mine / theirs
        shown = "" if not target else verdict(ok)
        rows.append(
            [
                label,
                fmt(mine, digits),
                fmt(theirs, digits),
                "-" if ratio is None else f"{ratio:.2f}x",
                target,
                shown,
            ]
        )

    phys = results.get("physical")
    if phys:
        mv, br = phys["medvault"], phys["pgbackrest"]
        for key, label, factor in (
            ("full_s", "full backup (s)", FULL_RATIO),
            ("incr_s", "incremental after pgbench -T (s)", INCR_RATIO),
            ("restore_s", "restore --recovery-target immediate (s)", RESTORE_RATIO),
        ):
            a, b = med_key(mv, key), med_key(br, key)
            ratio = None if a is None or not b else a / b
            ok = None if ratio is None else ratio <= factor
            targets[key] = {
                "target": f"<= {factor:.2f}x pgBackRest",
                "ratio": None if ratio is None else round(ratio, 3),
                "pass": ok,
            }
            row(label, a, b, f"<= {factor:.2f}x", ok)
        for key, label in (
            ("restore_synced_s", "restore, then sync (s)"),
            ("full_cpu_s", "full backup CPU user+sys (s)"),
            ("incr_cpu_s", "incremental CPU user+sys (s)"),
            ("restore_cpu_s", "restore CPU user+sys (s)"),
        ):
            row(label, med_key(mv, key), med_key(br, key))
        for key, label in (
            ("repo_full_bytes", "repository after full (MiB)"),
            ("repo_incr_bytes", "repository after incremental (MiB)"),
        ):
            a, b = med_key(mv, key), med_key(br, key)
            row(label, None if a is None else a / MiB, None if b is None else b / MiB, digits=0)
        for key, label in (
            ("full_rss_kb", "peak RSS full backup (MB)"),
            ("incr_rss_kb", "peak RSS incremental (MB)"),
            ("restore_rss_kb", "peak RSS restore (MB)"),
        ):
            a, b = med_key(mv, key), med_key(br, key)
            a_mb = None if a is None else a * 1024 / MB
            row(label, a_mb, None if b is None else b * 1024 / MB, digits=0)

    wal = results.get("wal")
    if wal:
        a = med([s["push_ms"] for s in wal["medvault"] if "push_ms" in s])
        b = med([s["push_ms"] for s in wal["pgbackrest"] if "push_ms" in s])
        ok = None if a is None or results["shim"] else a <= WAL_PUSH_MS
        targets["wal_push_ms"] = {"target": f"<= {WAL_PUSH_MS} ms", "value": a, "pass": ok}
        row("one wal-push, sync (ms, median)", a, b, f"<= {WAL_PUSH_MS} ms", ok, digits=0)

    for run in results.get("load") or []:
        if run["tool"] != "medvault" or "error" in run:
            continue
        other = next(
            (
                r
                for r in results["load"]
                if r["tool"] == "pgbackrest" and r["mode"] == run["mode"] and "error" not in r
            ),
            None,
        )
        ok = None if results["shim"] else run["keeps_up"]
        targets[f"load_{run['mode']}"] = {
            "target": "keeps up, 0 failures",
            "max_backlog": run["max_backlog"],
            "failures": run["failures"],
            "pass": ok,
        }
        row(
            f"under pgbench -c 4: max backlog, {run['mode']} (segments)",
            run["max_backlog"],
            None if other is None else other["max_backlog"],
            "keeps up, 0 fail",
            ok,
            digits=0,
        )
        row(
            f"under pgbench -c 4: archived, {run['mode']} (seg/s)",
            run["segments_per_s_during_load"],
            None if other is None else other["segments_per_s_during_load"],
        )
        row(
            f"under pgbench -c 4: pgbench tps, {run['mode']}",
            run["pgbench"]["tps"],
            None if other is None else other["pgbench"]["tps"],
            digits=0,
        )
    for run in results.get("drain") or []:
        if run["tool"] != "medvault" or "error" in run:
            continue
        other = next(
            (
                r
                for r in results["drain"]
                if r["tool"] == "pgbackrest" and r["mode"] == run["mode"] and "error" not in r
            ),
            None,
        )
        row(
            f"drain a {run['queued']}-segment backlog, {run['mode']} (seg/s)",
            run["segments_per_s"],
            None if other is None else other["segments_per_s"],
        )

    def judged(
        key: str, label: str, mine: float | None, theirs: float | None, limit: float, of: str
    ) -> None:
        """A row with a ratio target, also recorded in `targets`."""
        ratio = None if mine is None or not theirs else mine / theirs
        ok = None if ratio is None else ratio <= limit
        targets[key] = {
            "target": f"<= {limit:.2f}x {of}",
            "ratio": None if ratio is None else round(ratio, 3),
            "pass": ok,
        }
        row(label, mine, theirs, f"<= {limit:.2f}x", ok)

    logical = results.get("logical")
    if logical:
        judged(
            "logical_s",
            "logical backup (s) [vs pg_dump -Fc > file]",
            med_key(logical["medvault"], "logical_s"),
            med_key(logical["pg_dump"], "logical_s"),
            LOGICAL_RATIO,
            "pg_dump -Fc",
        )

    sums = results.get("checksums")
    if sums:
        for tool in ("medvault", "pgbackrest"):
            on = med_key(sums.get(f"{tool}/checksums", []), "full_s")
            off = med_key(sums.get(f"{tool}/no_checksums", []), "full_s")
            if on is not None and off:
                targets[f"checksum_cost_{tool}"] = {
                    "with_s": on,
                    "without_s": off,
                    "extra_pct": round((on - off) / off * 100, 1),
                }
        mv_on = med_key(sums.get("medvault/checksums", []), "full_s")
        mv_off = med_key(sums.get("medvault/no_checksums", []), "full_s")
        br_on = med_key(sums.get("pgbackrest/checksums", []), "full_s")
        br_off = med_key(sums.get("pgbackrest/no_checksums", []), "full_s")
        row("full backup, checksums on (s)", mv_on, br_on)
        row("full backup, checksums off (s)", mv_off, br_off)
        row(
            "page-checksum verification cost (s)",
            None if mv_on is None or mv_off is None else mv_on - mv_off,
            None if br_on is None or br_off is None else br_on - br_off,
            show_ratio=False,  # a difference of two medians: no meaningful ratio
        )
    drills = results.get("drill")
    if drills:
        judged(
            "drill_s",
            "drill (s) [vs pgBackRest restore + PG start-up]",
            med_key(drills["medvault"], "drill_s"),
            med_key(drills["pgbackrest"], "drill_s"),
            DRILL_RATIO,
            "pgBackRest restore + start-up",
        )
        row(
            "  of which pgBackRest restore / start-up (s)",
            med_key(drills["pgbackrest"], "restore_s"),
            med_key(drills["pgbackrest"], "startup_s"),
            show_ratio=False,
        )
    return rows, targets


def render(rows: list[list[str]]) -> str:
    head = ["operation", "medvault", "pgBackRest", "ratio", "target", "verdict"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join(
        h.ljust(w) if i in (0, 4, 5) else h.rjust(w)
        for i, (h, w) in enumerate(zip(head, widths, strict=True))
    )
    out = [line, "-" * len(line)]
    for r in rows:
        out.append(
            "  ".join(
                c.ljust(w) if i in (0, 4, 5) else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


def medvault_source() -> dict[str, str]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty_src": git("status", "--short", "src")}


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=int, default=100, help="pgbench scale (default 100)")
    parser.add_argument("--rounds", type=int, default=2, help="A B / B A rounds (default 2)")
    parser.add_argument(
        "--incr-duration", type=int, default=30, help="pgbench -T before incrementals"
    )
    parser.add_argument(
        "--wal-duration", type=int, default=120, help="pgbench -c 4 -T for the load phase"
    )
    parser.add_argument("--wal-pushes", type=int, default=10, help="single pushes per tool")
    parser.add_argument(
        "--backlog", type=int, default=64, help="segments queued for the drain phase"
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {PHASES}"
    )
    parser.add_argument(
        "--no-checksums",
        action="store_true",
        help="initialise the cluster without data checksums (the checksums phase is skipped)",
    )
    parser.add_argument(
        "--pgbackrest-cipher",
        action="store_true",
        help="encrypt pgBackRest's repository too (aes-256-cbc); default off, as in the issue",
    )
    parser.add_argument("--verify-all-rounds", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile one medvault full backup at the end"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if args.no_checksums and "checksums" in args.phases:
        args.phases.remove("checksums")
    if args.rounds < 1 or args.scale < 1:
        parser.error("--rounds and --scale must be >= 1")
    return args


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    base = make_pg_tempdir("medvault-pgbench-")
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench-pg: run as root (clusters and tools run as the postgres user)")
    if not PgBackRest.available():
        sys.exit("bench-pg: pgbackrest not found (run `scripts/bootstrap.sh bench`)")
    args.shim = not pg_tools.wal_push_available()
    if args.shim:
        log(
            "WARNING: this medvault has no `wal-push` command; archiving through the library "
            "stand-in (bench/pg_tools.py). WAL figures are not medvault's and are not judged"
        )
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    source_at_start = medvault_source()
    results: dict[str, Any] = {"shim": args.shim}
    errors: list[str] = []
    with workspace() as base, running_clusters() as clusters:
        try:
            cluster = make_cluster(
                base, "main", clusters, checksums=not args.no_checksums, scale=args.scale
            )
            results["cluster"] = {
                "scale": args.scale,
                "database_bytes": int(cluster.scalar("SELECT pg_database_size('postgres')")),
                "data_checksums": cluster.scalar("SHOW data_checksums"),
                "server_version": cluster.scalar("SHOW server_version"),
            }
            for phase in args.phases:
                log(f"== {phase} (load average {os.getloadavg()[0]:.2f})")
                results.setdefault("load1_at_phase_start", {})[phase] = os.getloadavg()[0]
                try:
                    if phase == "physical":
                        results[phase] = physical_phase(args, base, cluster, clusters)
                    elif phase == "logical":
                        results[phase] = logical_phase(args, base, cluster)
                    elif phase == "wal":
                        results[phase] = wal_push_phase(args, base, cluster)
                    elif phase in ("load", "drain"):
                        results[phase] = wal_stream_phase(args, base, cluster, phase)
                    elif phase == "checksums":
                        results[phase] = checksums_phase(args, base, cluster, clusters)
                    elif phase == "drill":
                        results[phase] = drill_phase(args, base, cluster, clusters)
                except (ToolError, AssertionError, psycopg.Error, OSError) as exc:
                    errors.append(f"{phase}: {exc}")
                    log(f"  phase {phase} FAILED: {exc}")
            if args.profile:
                results["profile"] = run_profile(base, cluster, args.shim)
        except (ToolError, AssertionError, psycopg.Error) as exc:
            errors.append(f"setup: {exc}")
            log(f"FAILED: {exc}")

    rows, targets = build_table(results)
    print()
    print(
        f"medvault ({source_at_start['commit'][:8]}) vs {PgBackRest.version()}: pgbench scale "
        f"{args.scale}, {args.rounds} round(s), medians; pgBackRest zst, process-max=2"
        f"{', aes-256-cbc' if args.pgbackrest_cipher else ''}"
    )
    print(render(rows))
    if "profile" in results:
        print("\n" + results["profile"])
    for phase, samples in results.items():
        if isinstance(samples, dict):
            for name, runs in samples.items():
                if isinstance(runs, list):
                    for s in runs:
                        if isinstance(s, dict) and ("error" in s or "restore_error" in s):
                            errors.append(f"{phase}/{name}: {s.get('error') or s['restore_error']}")
        elif isinstance(samples, list):
            errors += [f"{phase}/{s['tool']}: {s['error']}" for s in samples if "error" in s]
    for error in errors:
        print(f"error: {error}")

    out = {
        "started": started_at.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_end": os.getloadavg(),
        },
        "versions": {"medvault": MedvaultPg.version(), "pgbackrest": PgBackRest.version()},
        "medvault_source": {"start": source_at_start, "end": medvault_source()},
        "table": rows,
        "targets": targets,
        "results": results,
        "errors": errors,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"pg-{stamp}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nresults written to {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
