"""medvault against restic and BorgBackup on the same generated data (`make bench`).

For every tool, in every round: a full backup into a fresh repository, an incremental backup
after a 1% change, a restore of that snapshot into an empty directory, `check --read-data`
(borg: `check --verify-data`), the repository size and the peak RSS of each process. medvault
also runs a full backup with `--no-verify-blobs` to price its decode-before-write check.
Tools run in ABBA order across rounds (forward, then reversed) so that drift from other load on
the machine spreads over all of them; the table quotes medians. Raw samples go to
bench/results/<timestamp>.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import datagen
from tools import TOOLS, Measured, MedvaultNoVerify, Tool, ToolError

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_SEED = 20240601
ORDER = ("medvault", "medvault-noverify", "restic", "borg")
COMPARED = ("medvault", "restic", "borg")
MB = 1_000_000
MiB = 1024 * 1024

# (metric, what restic's figure is multiplied by, label) -- medvault must stay at or below.
RELATIVE_TARGETS = {
    "full_s": 0.5,
    "incr_s": 0.5,
    "restore_s": 1.0,
    "check_s": 1.0,
}
RSS_TARGET_MB = 400


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


# -- data --------------------------------------------------------------------------------


def prepare_data(workdir: Path, size_gib: float, seed: int, keep: bool) -> datagen.Manifest:
    """Generate the tree, or reuse a kept one that matches the plan and is not mid-change."""
    data = data_dir(workdir, size_gib, seed)
    manifest_path = data.with_name(data.name + ".manifest.json")
    dirty = dirty_marker(data)
    planned = datagen.plan_tree(size_gib, seed)
    if keep and manifest_path.is_file() and not dirty.exists() and data.is_dir():
        kept = datagen.Manifest.from_json(manifest_path.read_text())
        sizes_ok = all(
            (data / f.path).is_file() and (data / f.path).stat().st_size == f.size
            for f in kept.files
        )
        if kept.to_json() == planned.to_json() and sizes_ok:
            log(f"reusing data in {data}")
            return kept
    log(f"generating {size_gib} GiB of data in {data} (seed {seed})")
    started = time.monotonic()
    manifest_path.unlink(missing_ok=True)
    dirty.unlink(missing_ok=True)
    manifest = datagen.generate(data, size_gib, seed)
    manifest_path.write_text(manifest.to_json())
    log(
        f"generated {len(manifest.files)} files, {manifest.total_bytes / MiB:.0f} MiB "
        f"({manifest.random_bytes / manifest.total_bytes:.0%} random) in "
        f"{time.monotonic() - started:.0f} s"
    )
    return manifest


def data_dir(workdir: Path, size_gib: float, seed: int) -> Path:
    return workdir / f"data-{size_gib:g}gib-seed{seed}-v{datagen.GENERATOR_VERSION}"


def dirty_marker(data: Path) -> Path:
    return data.with_name(data.name + ".dirty")


def compare_trees(source: Path, restored: Path, limit: int = 10) -> list[str]:
    """Differences between two trees: entries, types, modes, sizes, bytes, link targets."""
    problems: list[str] = []

    def entries(root: Path) -> dict[str, os.stat_result]:
        found = {}
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                full = os.path.join(dirpath, name)
                found[os.path.relpath(full, root)] = os.lstat(full)
        return found

    if not restored.is_dir():
        return [f"{restored} does not exist"]
    want, got = entries(source), entries(restored)
    for rel in sorted(set(want) ^ set(got)):
        problems.append(f"{rel}: {'missing' if rel in want else 'unexpected'} in restore")
    for rel in sorted(set(want) & set(got)):
        a, b = want[rel], got[rel]
        src, dst = source / rel, restored / rel
        if (a.st_mode, a.st_size) != (b.st_mode, b.st_size):
            problems.append(
                f"{rel}: mode/size {a.st_mode:o}/{a.st_size} != {b.st_mode:o}/{b.st_size}"
            )
        elif os.path.islink(src):
            if os.readlink(src) != os.readlink(dst):
                problems.append(f"{rel}: symlink target differs")
        elif os.path.isfile(src):
            if abs(a.st_mtime_ns - b.st_mtime_ns) > 1000:
                problems.append(f"{rel}: mtime {a.st_mtime_ns} != {b.st_mtime_ns}")
            if not same_bytes(src, dst):
                problems.append(f"{rel}: content differs")
        if len(problems) >= limit:
            break
    return problems


def same_bytes(a: Path, b: Path) -> bool:
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        while True:
            x, y = fa.read(4 * MiB), fb.read(4 * MiB)
            if x != y:
                return False
            if not x:
                return True


# -- measuring ---------------------------------------------------------------------------


def record(sample: dict[str, Any], key: str, result: Measured) -> None:
    sample[f"{key}_s"] = round(result.seconds, 3)
    sample[f"{key}_cpu_s"] = round(result.user_s + result.sys_s, 3)
    sample[f"{key}_rss_kb"] = result.rss_kb


def settle() -> None:
    """Flush dirty pages left by the previous step so they are not charged to the next."""
    os.sync()


def measure_tool(
    cls: type[Tool],
    home: Path,
    data: Path,
    manifest: datagen.Manifest,
    verify_restore: bool,
) -> dict[str, Any]:
    tool = cls(home)
    sample: dict[str, Any] = {"load1_at_start": round(os.getloadavg()[0], 2)}
    try:
        tool.init()
        datagen.warm_cache(data)
        settle()
        result = tool.backup(data, incremental=False)
        record(sample, "full", result)
        sample["full_facts"] = tool.backup_facts(result)
        sample["repo_full_bytes"] = tool.repo_bytes()
        log(f"  {cls.name}: full backup {result.seconds:.1f} s, {result.rss_kb / 1024:.0f} MiB")
        if cls is MedvaultNoVerify:
            return sample

        dirty = dirty_marker(data)
        dirty.touch()
        undo = datagen.mutate(data, manifest)
        try:
            sample["changed_bytes"] = undo.bytes_changed
            settle()
            result = tool.backup(data, incremental=True)
            record(sample, "incr", result)
            sample["incr_facts"] = tool.backup_facts(result)
            sample["repo_incr_bytes"] = tool.repo_bytes()
            log(f"  {cls.name}: incremental {result.seconds:.1f} s")

            target = home / "restore"
            settle()
            result = tool.restore(target)
            record(sample, "restore", result)
            # medvault syncs before it reports; restic and borg leave dirty pages behind.
            # "restore_synced_s" adds the flush each tool left, for a durable-to-durable figure.
            flush_started = time.perf_counter()
            os.sync()
            flush = time.perf_counter() - flush_started
            sample["restore_synced_s"] = round(result.seconds + flush, 3)
            log(f"  {cls.name}: restore {result.seconds:.1f} s (+{flush:.1f} s to sync)")
            if verify_restore:
                problems = compare_trees(data, target / data.relative_to("/"))
                sample["restore_problems"] = problems
                verdict = "identical" if not problems else f"{len(problems)}+ DIFFERENCES"
                log(f"  {cls.name}: restored tree {verdict}")
                for problem in problems:
                    log(f"    {problem}")
            shutil.rmtree(target)
            settle()

            result = tool.check()
            record(sample, "check", result)
            log(f"  {cls.name}: check --read-data {result.seconds:.1f} s")
        finally:
            datagen.undo_mutation(data, undo)
            dirty.unlink()
    finally:
        tool.cleanup()
    return sample


# -- reporting ---------------------------------------------------------------------------


def median(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    keys = (
        "full_s",
        "incr_s",
        "restore_s",
        "restore_synced_s",
        "check_s",
        "full_cpu_s",
        "incr_cpu_s",
        "restore_cpu_s",
        "check_cpu_s",
        "repo_full_bytes",
        "repo_incr_bytes",
        "full_rss_kb",
        "incr_rss_kb",
        "restore_rss_kb",
        "check_rss_kb",
    )
    out: dict[str, dict[str, float | None]] = {}
    for name, runs in samples.items():
        ok = [s for s in runs if "error" not in s]
        out[name] = {k: median(ok, k) for k in keys}
        backups = [max(s.get("full_rss_kb", 0), s.get("incr_rss_kb", 0)) for s in ok]
        out[name]["backup_rss_kb"] = statistics.median(backups) if backups else None
        out[name]["backup_rss_kb_max"] = max(backups) if backups else None
    return out


ROWS: list[tuple[str, str, Callable[[float], float], str]] = [
    ("full backup", "full_s", lambda v: v, "s"),
    ("incremental (1% changed)", "incr_s", lambda v: v, "s"),
    ("restore", "restore_s", lambda v: v, "s"),
    ("restore, then sync", "restore_synced_s", lambda v: v, "s"),
    ("check --read-data", "check_s", lambda v: v, "s"),
    ("full backup CPU user+sys", "full_cpu_s", lambda v: v, "s"),
    ("incremental CPU user+sys", "incr_cpu_s", lambda v: v, "s"),
    ("restore CPU user+sys", "restore_cpu_s", lambda v: v, "s"),
    ("check CPU user+sys", "check_cpu_s", lambda v: v, "s"),
    ("repo size after full", "repo_full_bytes", lambda v: v / MiB, "MiB"),
    ("repo size after incremental", "repo_incr_bytes", lambda v: v / MiB, "MiB"),
    ("peak RSS backup", "backup_rss_kb", lambda v: v * 1024 / MB, "MB"),
    ("peak RSS restore", "restore_rss_kb", lambda v: v * 1024 / MB, "MB"),
    ("peak RSS check", "check_rss_kb", lambda v: v * 1024 / MB, "MB"),
]


def verdicts(medians: dict[str, dict[str, float | None]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    mv, restic = medians.get("medvault", {}), medians.get("restic", {})
    for key, factor in RELATIVE_TARGETS.items():
        a, b = mv.get(key), restic.get(key)
        ratio = a / b if a is not None and b else None
        out[key] = {
            "target": f"<= {factor:.1f}x restic",
            "ratio": None if ratio is None else round(ratio, 3),
            "pass": None if ratio is None else ratio <= factor,
        }
    worst = mv.get("backup_rss_kb_max")
    rss_mb = None if worst is None else worst * 1024 / MB
    out["backup_rss_kb"] = {
        "target": f"<= {RSS_TARGET_MB} MB (worst run)",
        "value_mb": None if rss_mb is None else round(rss_mb, 1),
        "pass": None if rss_mb is None else rss_mb <= RSS_TARGET_MB,
    }
    return out


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(
    medians: dict[str, dict[str, float | None]], checks: dict[str, dict[str, Any]]
) -> str:
    head = (
        f"{'metric (median)':<35}{'medvault':>10}{'restic':>10}{'borg':>10}"
        f"{'mv/restic':>11}  {'target':<28}{'mv/borg':>9}"
    )
    lines = [head, "-" * len(head)]
    for label, key, convert, unit in ROWS:
        cells = []
        for name in COMPARED:
            value = medians.get(name, {}).get(key)
            cells.append(fmt(None if value is None else convert(value)))
        mv = medians.get("medvault", {}).get(key)

        def ratio(other: str, key: str = key, mv: float | None = mv) -> str:
            theirs = medians.get(other, {}).get(key)
            return "-" if mv is None or not theirs else f"{mv / theirs:.2f}x"

        target = ""
        if key in checks:
            check = checks[key]
            verdict = {True: "PASS", False: "MISS", None: "n/a"}[check["pass"]]
            target = f"{check['target']} {verdict}"
        lines.append(
            f"{label + ' (' + unit + ')':<35}{cells[0]:>10}{cells[1]:>10}{cells[2]:>10}"
            f"{ratio('restic'):>11}  {target:<28}{ratio('borg'):>9}"
        )
    return "\n".join(lines)


def verify_cost(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    with_v = [s["full_s"] for s in samples.get("medvault", []) if "full_s" in s]
    without = [s["full_s"] for s in samples.get("medvault-noverify", []) if "full_s" in s]
    if not with_v or not without:
        return None
    a, b = statistics.median(with_v), statistics.median(without)
    paired = [round(x - y, 3) for x, y in zip(with_v, without, strict=False)]
    cpu_v = [s["full_cpu_s"] for s in samples["medvault"] if "full_cpu_s" in s]
    cpu_n = [s["full_cpu_s"] for s in samples["medvault-noverify"] if "full_cpu_s" in s]
    return {
        "full_s_verify": a,
        "full_s_no_verify": b,
        "extra_s": round(a - b, 3),
        "extra_pct": round((a - b) / b * 100, 1),
        "paired_extra_s": paired,
        "extra_cpu_s": round(statistics.median(cpu_v) - statistics.median(cpu_n), 3),
    }


def medvault_source() -> dict[str, str]:
    """Which medvault code ran: others edit src/ while benchmarks run."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty_src": git("status", "--short", "src")}


def tool_versions(names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = TOOLS[name].version()
        except (OSError, subprocess.CalledProcessError) as exc:
            out[name] = f"unknown ({exc})"
    return out


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-gib", type=float, default=2.0, help="data size (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (default 2)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="data generator seed")
    parser.add_argument(
        "--tools",
        default=",".join(ORDER),
        help=f"comma-separated subset of {','.join(ORDER)}",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "medvault-bench",
        help="scratch space for data, repositories and restores",
    )
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the generated data for the next run"
    )
    parser.add_argument(
        "--verify-all-rounds",
        action="store_true",
        help="compare every tool's restore with the source in every round (default: every "
        "tool in round 1, medvault in all rounds)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - set(ORDER)
    if unknown:
        parser.error(f"unknown tool(s): {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.size_gib <= 0:
        parser.error("--rounds must be >= 1 and --size-gib > 0")
    return args


def available_tools(wanted: list[str]) -> list[str]:
    names = []
    for name in ORDER:
        if name not in wanted:
            continue
        if TOOLS[name].available():
            names.append(name)
        else:
            log(
                f"WARNING: {TOOLS[name].binary} not found; skipping {name} "
                "(run `scripts/bootstrap.sh bench`)"
            )
    return names


def check_space(workdir: Path, size_gib: float) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(workdir).free
    need = int(size_gib * 4 * 1024**3) + 1024**3  # data + restore + repository + slack
    if free < need:
        sys.exit(f"bench: {workdir} has {free / 1024**3:.1f} GiB free, needs ~{need / 1024**3:.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = available_tools(args.tools)
    if not names:
        sys.exit("bench: no tool to run")
    check_space(args.workdir, args.size_gib)
    source_at_start = medvault_source()
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    run_dir = args.workdir / f"run-{stamp}"
    data = data_dir(args.workdir, args.size_gib, args.seed)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    manifest: datagen.Manifest | None = None
    ratio: dict[str, float] = {}
    try:
        manifest = prepare_data(args.workdir, args.size_gib, args.seed, args.keep_data)
        ratio = datagen.compression_ratio(data, manifest)
        log(f"zstd-1 ratio on a sample: text {ratio.get('text')}x, all {ratio.get('all')}x")
        warmed = datagen.warm_cache(data)
        log(f"page cache warmed ({warmed / MiB:.0f} MiB read)")
        for round_no in range(args.rounds):
            order = names if round_no % 2 == 0 else list(reversed(names))
            log(f"round {round_no + 1}/{args.rounds}: {' '.join(order)}")
            for name in order:
                verify = args.verify_all_rounds or round_no == 0 or name == "medvault"
                home = run_dir / f"{name}-round{round_no + 1}"
                try:
                    sample = measure_tool(TOOLS[name], home, data, manifest, verify)
                except ToolError as exc:
                    log(f"  {name}: FAILED: {exc}")
                    sample = {"error": str(exc)}
                sample["round"] = round_no + 1
                samples[name].append(sample)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if not args.keep_data:
            shutil.rmtree(data, ignore_errors=True)
            data.with_name(data.name + ".manifest.json").unlink(missing_ok=True)
            dirty_marker(data).unlink(missing_ok=True)
            if args.workdir.is_dir() and not any(args.workdir.iterdir()):
                args.workdir.rmdir()

    medians = summarize(samples)
    checks = verdicts(medians)
    cost = verify_cost(samples)
    print()
    print(
        f"medvault ({source_at_start['commit'][:8]}) vs restic vs borg: {args.size_gib:g} GiB, "
        f"{args.rounds} round(s), medians; restic compression auto (default), borg zstd,1"
    )
    print(render_table(medians, checks))
    if cost is not None:
        print(
            f"\nmedvault decode-before-write verification: +{cost['extra_s']:.2f} s "
            f"({cost['extra_pct']:+.1f}%) on a full backup "
            f"({cost['full_s_verify']:.1f} s vs {cost['full_s_no_verify']:.1f} s with "
            f"--no-verify-blobs; paired per round: {cost['paired_extra_s']}; "
            f"CPU +{cost['extra_cpu_s']:.1f} s)"
        )
    rss = checks["backup_rss_kb"]
    print(
        f"medvault peak RSS of a backup (worst run): {fmt(rss['value_mb'])} MB, "
        f"target <= {RSS_TARGET_MB} MB: "
        f"{ {True: 'PASS', False: 'MISS', None: 'n/a'}[rss['pass']] }"
    )
    failures = {n: [s["error"] for s in runs if "error" in s] for n, runs in samples.items()}
    for name, errors in failures.items():
        for error in errors:
            print(f"error: {name}: {error}")

    results = {
        "started": started_at.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "config": {
            "size_gib": args.size_gib,
            "rounds": args.rounds,
            "seed": args.seed,
            "tools": names,
            "order": "ABBA: forward in odd rounds, reversed in even rounds",
            "restic_compression": "auto (default)",
            "borg_compression": "zstd,1",
            "borg_encryption": "repokey-blake2",
        },
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_end": os.getloadavg(),
        },
        "versions": tool_versions(names),
        "medvault_source": {"start": source_at_start, "end": medvault_source()},
        "data": {
            "files": len(manifest.files) if manifest else None,
            "total_bytes": manifest.total_bytes if manifest else None,
            "random_bytes": manifest.random_bytes if manifest else None,
            "zstd1_ratio_sample": ratio,
        },
        "samples": samples,
        "medians": medians,
        "targets": checks,
        "verify_cost": cost,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"{stamp}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults written to {out}")
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
