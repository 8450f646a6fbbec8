"""Prune of a repository with 100 snapshots: medvault, restic and BorgBackup side by side
(`make bench-prune`).

Each tool backs up the same tree 100 times: a fixed base (never changing) plus one file of
fresh random data per snapshot, so every snapshot holds exactly `--unique-mib` of data no
other snapshot has. Then, on a copy of each repository, the oldest K snapshots are forgotten
and the tool's prune runs (medvault: `prune --young 0s`, which condemns and, nothing else
running, deletes in the same run; restic: `prune`; borg: `compact`, after `delete`). Three
cases separate what prune's time follows:

- small:   base S, forget K   (the reference)
- large:   base 4 S, forget K (4x the repository, the same data removed)
- more:    base S, forget 5 K (the same repository, 5x the data removed)

If prune's time followed the repository's size, `large` would take about 4x `small`; if it
follows the data removed plus the index, `large` stays near `small` and `more` grows.
Rounds alternate the tools' order (A B C / C B A); the table quotes medians. Raw samples go
to bench/results/prune-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tools import Borg, Measured, Medvault, Restic, Tool, ToolError, tree_bytes

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
MiB = 1024 * 1024
SNAPSHOTS = 100
BASE_FILE_MIB = 8


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        left = size
        while left:
            step = min(left, 4 * MiB)
            handle.write(os.urandom(step))
            left -= step


def make_base(data: Path, base_mib: int) -> None:
    data.mkdir(parents=True)
    for n in range(max(1, base_mib // BASE_FILE_MIB)):
        write_random(data / f"base-{n:04d}.bin", BASE_FILE_MIB * MiB)


def snapshot_ids(tool: Tool, results: list[Measured]) -> list[str]:
    """Each backup's id, oldest first (borg names archives snap1, snap2, ...)."""
    ids = []
    for number, result in enumerate(results, 1):
        if isinstance(tool, Medvault):
            ids.append(json.loads(result.stdout)["snapshot"])
        elif isinstance(tool, Restic):
            summary = next(
                json.loads(line)
                for line in reversed(result.stdout.splitlines())
                if '"summary"' in line
            )
            ids.append(summary["snapshot_id"])
        else:
            ids.append(f"snap{number}")
    return ids


def build(tool_class: type[Tool], home: Path, data: Path, unique_mib: int) -> list[str]:
    tool = tool_class(home)
    tool.init()
    results = []
    unique = data / "unique.bin"
    for number in range(SNAPSHOTS):
        write_random(unique, unique_mib * MiB)
        results.append(tool.backup(data, incremental=number > 0))
    unique.unlink()
    return snapshot_ids(tool, results)


def index_bytes(tool: Tool) -> int:
    """What the tool keeps to know where blobs are: medvault index/, restic index/, borg
    its repository index and hints plus the chunks cache."""
    if isinstance(tool, Medvault | Restic):
        return tree_bytes(tool.repo / "index")
    total = sum(p.stat().st_size for p in tool.repo.glob("index.*"))
    return total + tree_bytes(tool.home / "borg-home" / "cache")


def forget_and_prune(tool: Tool, ids: list[str]) -> dict[str, Any]:
    sample: dict[str, Any] = {"repo_bytes_before": tree_bytes(tool.repo)}
    sample["index_bytes"] = index_bytes(tool)
    if isinstance(tool, Medvault):
        base = [tool.binary, "--repo", str(tool.repo)]
        forget = tool.run([*base, "forget", *ids])
        # Nothing else runs: one prune condemns and deletes (both phases in one run).
        prune = tool.run([*base, "prune", "--young", "0s", "--json"])
        report = json.loads(prune.stdout)
        if report["waiting"] or report["deleted_packs"] != report["condemned_packs"]:
            raise ToolError(f"medvault prune left work for a later run: {report}")
        sample |= {
            "prune_s": round(prune.seconds, 3),
            "prune_rss_kb": prune.rss_kb,
            "freed_reported": report["freed_bytes"],
        }
    elif isinstance(tool, Restic):
        forget = tool.run([tool.binary, "-r", str(tool.repo), "forget", *ids])
        prune = tool.run([tool.binary, "-r", str(tool.repo), "prune"])
        sample |= {"prune_s": round(prune.seconds, 3), "prune_rss_kb": prune.rss_kb}
    else:
        forget = tool.run([tool.binary, "delete", f"{tool.repo}", *ids])
        prune = tool.run([tool.binary, "compact", str(tool.repo)])
        sample |= {"prune_s": round(prune.seconds, 3), "prune_rss_kb": prune.rss_kb}
    sample["forget_s"] = round(forget.seconds, 3)
    sample["total_s"] = round(forget.seconds + sample["prune_s"], 3)
    sample["repo_bytes_after"] = tree_bytes(tool.repo)
    sample["freed_bytes"] = sample["repo_bytes_before"] - sample["repo_bytes_after"]
    return sample


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-mib", type=int, default=256, help="the small base (default 256)")
    parser.add_argument("--unique-mib", type=int, default=2, help="new data per snapshot")
    parser.add_argument("--forget", type=int, default=10, help="K: snapshots forgotten")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tools", default="medvault,restic,borg")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    classes = {"medvault": Medvault, "restic": Restic, "borg": Borg}
    chosen = [classes[name] for name in args.tools.split(",")]
    for cls in chosen:
        if not cls.available():
            sys.exit(f"bench-prune: {cls.name} not found (run `scripts/bootstrap.sh bench`)")
    cases = {
        "small": (args.base_mib, args.forget),
        "large": (4 * args.base_mib, args.forget),
        "more": (args.base_mib, 5 * args.forget),
    }
    started_at = datetime.now(UTC)
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {c: {} for c in cases}
    work = Path(tempfile.mkdtemp(prefix="medvault-prune-bench-"))
    try:
        built: dict[tuple[int, str], list[str]] = {}
        for base_mib in sorted({b for b, _ in cases.values()}):
            data = work / f"data-{base_mib}"
            make_base(data, base_mib)
            for cls in chosen:
                log(f"{cls.name}: {SNAPSHOTS} backups of a {base_mib} MiB base")
                started = time.monotonic()
                built[(base_mib, cls.name)] = build(
                    cls, work / f"{cls.name}-{base_mib}", data, args.unique_mib
                )
                log(f"  built in {time.monotonic() - started:.0f} s")
            shutil.rmtree(data)
        for round_no in range(args.rounds):
            order = chosen if round_no % 2 == 0 else list(reversed(chosen))
            for case, (base_mib, forget) in cases.items():
                for cls in order:
                    home = work / f"run-{cls.name}"
                    shutil.copytree(work / f"{cls.name}-{base_mib}", home, symlinks=True)
                    os.sync()
                    try:
                        ids = built[(base_mib, cls.name)][:forget]
                        sample = forget_and_prune(cls(home), ids)
                    finally:
                        shutil.rmtree(home, ignore_errors=True)
                    sample["round"] = round_no + 1
                    samples[case].setdefault(cls.name, []).append(sample)
                    log(
                        f"round {round_no + 1} {case}: {cls.name} prune {sample['prune_s']:.2f} s, "
                        f"freed {sample['freed_bytes'] / MiB:.0f} MiB of "
                        f"{sample['repo_bytes_before'] / MiB:.0f} MiB"
                    )
    except ToolError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(case: str, tool: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[case][tool])

    print(
        f"\nprune after forgetting the oldest K of {SNAPSHOTS} snapshots "
        f"({args.unique_mib} MiB unique each), medians of {args.rounds} rounds"
    )
    head = f"{'case':<7}{'repo MiB':>9}{'index KiB':>10}{'K':>4}{'freed MiB':>10}"
    head += "".join(f"{c.name + ' s':>14}" for c in chosen)
    if len(chosen) > 1:
        head += "".join(f"{'vs ' + c.name:>12}" for c in chosen[1:])
    print(head)
    for case, (_base, forget) in cases.items():
        first = chosen[0].name
        line = (
            f"{case:<7}{med(case, first, 'repo_bytes_before') / MiB:>9.0f}"
            f"{med(case, first, 'index_bytes') / 1024:>10.0f}{forget:>4}"
            f"{med(case, first, 'freed_bytes') / MiB:>10.0f}"
        )
        line += "".join(f"{med(case, c.name, 'prune_s'):>14.2f}" for c in chosen)
        line += "".join(
            f"{med(case, first, 'prune_s') / med(case, c.name, 'prune_s'):>11.2f}x"
            for c in chosen[1:]
        )
        print(line)
    for cls in chosen:
        small = med("small", cls.name, "prune_s")
        print(
            f"{cls.name}: large/small {med('large', cls.name, 'prune_s') / small:.2f}x "
            f"(repository 4x), more/small {med('more', cls.name, 'prune_s') / small:.2f}x "
            f"(data removed 5x)"
        )
    out = {
        "started": started_at.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"host": platform.node(), "cpus": os.cpu_count()},
        "versions": {cls.name: cls.version() for cls in chosen},
        "samples": samples,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"prune-{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
