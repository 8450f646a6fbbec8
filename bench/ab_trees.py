"""medvault against medvault: this checkout's code against another checkout's, on the same data
in the same run, to show what a change costs (`python bench/ab_trees.py --base DIR`).

DIR is a checkout of an earlier commit with its own `.venv` (`git worktree add DIR COMMIT &&
cd DIR && scripts/bootstrap.sh`). Each tree gets its own repositories; the two alternate
A B / B A in every step, and the table quotes medians of wall and CPU time and the ratio
head/base:

  files     a generated tree (bench/datagen.py): full backup into a fresh repository, a second
            backup of the unchanged tree (the incremental shortcut), restore, check --read-data
  wal       wal-push of real 16 MiB segments of one pgbench cluster, one process per push, every
            segment pushed by both trees (into their own repositories)
  physical  full physical backup of the cluster (local method), restore, logical backup
  drill     a physical drill of the newest backup

Both trees are byte-compiled first. Raw samples go to bench/results/ab-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pg_tools
from pg_run import make_cluster, pgbench, set_archive_command, use_archiver
from pg_tools import MedvaultPg, pg_dir
from run import data_dir, prepare_data, settle
from tools import Measured, Medvault

from pgcluster import PgCluster

BENCH_DIR = Path(__file__).resolve().parent
HEAD = BENCH_DIR.parent


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def binary(tree: Path) -> str:
    path = tree / ".venv" / "bin" / "medvault"
    if not os.access(path, os.X_OK):
        sys.exit(f"{path} is missing: run scripts/bootstrap.sh in {tree}")
    return str(path)


def commit_of(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


class Samples:
    """step -> tree -> list of (wall, cpu)."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, list[tuple[float, float]]]] = {}

    def add(self, step: str, tree: str, result: Measured) -> None:
        cpu = result.user_s + result.sys_s
        self.data.setdefault(step, {}).setdefault(tree, []).append((result.seconds, cpu))

    def table(self) -> list[str]:
        lines = [
            f"{'step':<24} {'n':>3} {'base wall':>10} {'head wall':>10} {'ratio':>6}"
            f" {'base cpu':>9} {'head cpu':>9} {'ratio':>6}"
        ]
        for step, trees in self.data.items():
            base, head = trees.get("base", []), trees.get("head", [])
            if not base or not head:
                continue
            bw, hw = (statistics.median(w for w, _ in s) for s in (base, head))
            bc, hc = (statistics.median(c for _, c in s) for s in (base, head))
            lines.append(
                f"{step:<24} {min(len(base), len(head)):>3} {bw:>9.3f}s {hw:>9.3f}s "
                f"{hw / bw:>6.3f} {bc:>8.3f}s {hc:>8.3f}s {hc / bc if bc else 0:>6.3f}"
            )
        return lines


def ordered(trees: dict[str, str], index: int) -> list[tuple[str, str]]:
    pairs = list(trees.items())
    return pairs if index % 2 == 0 else pairs[::-1]


def files_phase(trees: dict[str, str], work: Path, args: argparse.Namespace, out: Samples) -> None:
    manifest = prepare_data(work, args.size_gib, args.seed, keep=True)
    data = data_dir(work, args.size_gib, args.seed)
    log(f"files: {manifest.total_bytes / 2**20:.0f} MiB, {len(manifest.files)} files")
    for round_no in range(args.rounds):
        for name, exe in ordered(trees, round_no):
            home = work / f"files-{name}"
            shutil.rmtree(home, ignore_errors=True)
            tool = Medvault(home)
            tool.binary = exe
            tool.init()
            for step, action in (
                ("files backup full", lambda t=tool: t.backup(data, incremental=False)),
                ("files backup again", lambda t=tool: t.backup(data, incremental=True)),
                ("files restore", lambda t=tool, h=home: t.restore(h / "restored")),
                ("files check --read-data", lambda t=tool: t.check()),
            ):
                settle()
                out.add(step, name, action())
            log(f"  files round {round_no + 1} {name}: done")
            tool.cleanup()


def pg_phases(trees: dict[str, str], work: Path, args: argparse.Namespace, out: Samples) -> None:
    clusters: list[PgCluster] = []
    base = pg_dir(work / "pg")
    try:
        cluster = make_cluster(base, "main", clusters, checksums=True, scale=args.scale)
        tools = {
            name: MedvaultPg(base / f"mv-{name}", cluster, binary=exe)
            for name, exe in trees.items()
        }
        for tool in tools.values():
            tool.init()
        set_archive_command(cluster, "true")
        segments = wal_segments(cluster, base, args.wal_pushes)
        log(f"wal: {len(segments)} real segments, pushed by each tree")
        for index, segment in enumerate(segments):
            for name, _ in ordered(trees, index):
                out.add("wal-push", name, tools[name].wal_push(segment))
        for round_no in range(args.rounds):
            for name, _ in ordered(trees, round_no):
                tool = tools[name]
                # Each tree archives while it backs up, so its repository has the WAL the
                # backup and its drill need.
                use_archiver(cluster, tool.archive_command())
                settle()
                result, _facts = tool.backup("full")
                out.add("physical backup full", name, result)
                target = pg_dir(base / f"restore-{name}")
                shutil.rmtree(target, ignore_errors=True)
                settle()
                out.add("physical restore", name, tool.restore(target))
                shutil.rmtree(target, ignore_errors=True)
                settle()
                result, _facts = tool.backup_logical("postgres")
                out.add("logical backup", name, result)
                scratch = pg_dir(base / f"drill-{name}")
                settle()
                drill = tool.run("drill", pg_tools.SOURCE, "--scratch", str(scratch), "--json")
                if not json.loads(drill.stdout)["ok"]:
                    raise SystemExit(f"{name}: drill failed: {drill.stdout[:300]}")
                out.add("physical drill", name, drill)
                log(f"  pg round {round_no + 1} {name}: done")
    finally:
        for cluster in clusters:
            cluster.stop()


def wal_segments(cluster: PgCluster, base: Path, count: int) -> list[Path]:
    """Real WAL: pgbench writes, each segment switched out and copied while archiving is
    a no-op, so both trees push identical files."""
    staged = pg_dir(base / "wal-staged")
    names: list[str] = []
    while len(names) < count:
        pgbench(cluster, "-n", "-T", "2")
        name = str(cluster.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())"))
        cluster.execute("SELECT pg_switch_wal()")
        if name not in names:
            names.append(name)
    for name in names:
        shutil.copy(cluster.datadir / "pg_wal" / name, staged / name)
        shutil.chown(staged / name, "postgres", "postgres")
    return [staged / name for name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--phases", default="files,pg", help="files, pg (wal+physical+drill)")
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", type=int, default=30, help="pgbench scale")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--wal-pushes", type=int, default=30)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/medvault-ab"))
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    trees = {"base": binary(args.base.resolve()), "head": binary(HEAD)}
    for tree in (args.base.resolve(), HEAD):
        # Both byte-compiled, as installed: a module edited since the last compile would
        # otherwise be compiled on every start (PYTHONDONTWRITEBYTECODE, or a tree the
        # postgres user cannot write), a few ms that belong to neither tree's code.
        subprocess.run(
            [str(tree / ".venv" / "bin" / "python"), "-m", "compileall", "-q", str(tree / "src")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    commits = {"base": commit_of(args.base), "head": commit_of(HEAD)}
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ab-", dir=args.workdir))
    os.chmod(work, 0o755)
    out = Samples()
    phases = set(args.phases.split(","))
    log(f"base {commits['base']} vs head {commits['head']}, {args.rounds} rounds")
    try:
        if "files" in phases:
            # The generated data is kept between runs beside the scratch directory.
            files_phase(trees, args.workdir, args, out)
        if "pg" in phases:
            pg_phases(trees, work, args, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = out.table()
    print("\n".join(table))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report: dict[str, Any] = {
        "commits": commits,
        "args": {k: str(v) for k, v in vars(args).items()},
        "samples": out.data,
        "table": table,
    }
    (args.results_dir / f"ab-{stamp}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
