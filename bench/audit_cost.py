"""What recording runs in the audit trail costs: this checkout against another (`--base DIR`,
a checkout of the commit before, with its own .venv), alternating A B / B A, both
byte-compiled first (PYTHONDONTWRITEBYTECODE is set here: a stale .pyc costs milliseconds).

  wal-push   one process per 16 MiB segment (crafted: a valid page header, mostly zeros), each
             tree into its own local repository; head counts each push in its state directory
  backup     an incremental backup of a small tree (one file changed each time): head seals
             one audit record (one PUT)
  wal-push sealing an hour   head only: a push that also seals the previous hour's count

    cd bench && ../.venv/bin/python audit_cost.py --base /work/bench-audit-base
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAD = Path(__file__).resolve().parent.parent
PASSWORD = "bench-correct-horse-battery-staple"
MiB = 1024 * 1024
SEGMENT = 16 * MiB


def segment(name: str) -> bytes:
    """A WAL segment push_file accepts: a long page header of PostgreSQL 15, then zeros."""
    tli, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    start = log * 0x100000000 + seg * SEGMENT
    header = bytearray(40)
    header[0:2] = (0xD110).to_bytes(2, "little")
    header[2:4] = (0x0002).to_bytes(2, "little")
    header[4:8] = tli.to_bytes(4, "little")
    header[8:16] = start.to_bytes(8, "little")
    header[24:32] = (7_000_000_000_000_000_001).to_bytes(8, "little")
    header[32:36] = SEGMENT.to_bytes(4, "little")
    header[36:40] = (8192).to_bytes(4, "little")
    body = os.urandom(256 * 1024)  # some content that does not compress away
    return bytes(header) + body + bytes(SEGMENT - len(header) - len(body))


class Tree:
    def __init__(self, name: str, root: Path, work: Path) -> None:
        self.name = name
        self.exe = str(root / ".venv" / "bin" / "medvault")
        self.home = work / name
        self.home.mkdir(parents=True)
        self.repo = self.home / "repo"
        self.config = self.home / "medvault.toml"
        self.config.write_text(
            f'[repository.vault]\nurl = "{self.repo}"\n'
            '[source.emr]\nkind = "postgres"\ndsn = "host=/nowhere dbname=emr"\n'
        )
        self.cpu: list[float] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")} | {
            "MEDVAULT_PASSWORD": PASSWORD,
            "MEDVAULT_CONFIG": str(self.config),
            "MEDVAULT_REPOSITORY": "vault",
            "MEDVAULT_STATE_DIR": str(self.home / "state"),
        }
        subprocess.run(
            [str(root / ".venv" / "bin" / "python"), "-m", "compileall", "-q", str(root / "src")],
            check=True,
        )
        self.run("init")

    def run(self, *args: str) -> float:
        """Wall time of one process; its CPU time (user + system) goes to self.cpu, steadier
        than wall time on a busy machine."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([self.exe, *args], env=self.env, capture_output=True, text=True)
        took = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        if done.returncode != 0:
            sys.exit(f"{self.name}: medvault {' '.join(args)}: {done.stderr}")
        return took


def report(step: str, samples: dict[str, list[float]], trees: list[Tree]) -> None:
    base, head = samples["base"], samples["head"]
    bm, hm = statistics.median(base), statistics.median(head)
    bc, hc = (statistics.median(t.cpu[-len(head) :]) for t in trees)
    print(
        f"{step:<12} n={len(head):>3}  wall median base {bm * 1000:7.1f} ms, head "
        f"{hm * 1000:7.1f} ms ({(hm - bm) * 1000:+6.1f});  cpu median base {bc * 1000:7.1f} ms, "
        f"head {hc * 1000:7.1f} ms ({(hc - bc) * 1000:+6.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--pushes", type=int, default=40)
    parser.add_argument("--backups", type=int, default=15)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medvault-audit-cost-", dir="/var/tmp"))
    try:
        trees = [Tree("base", args.base, work), Tree("head", HEAD, work)]
        wal = work / "pg_wal"
        wal.mkdir()
        pushes: dict[str, list[float]] = {"base": [], "head": []}
        for n in range(1, args.pushes + 1):
            name = f"00000001000000{n // 256:02X}000000{n % 256:02X}"
            path = wal / name
            path.write_bytes(segment(name))
            for tree in trees if n % 2 else trees[::-1]:
                pushes[tree.name].append(tree.run("wal-push", "emr", str(path)))
            path.unlink()
        report("wal-push", pushes, trees)

        data = work / "data"
        data.mkdir()
        for i in range(50):
            (data / f"note-{i}.txt").write_bytes(os.urandom(20_000))
        backups: dict[str, list[float]] = {"base": [], "head": []}
        for tree in trees:
            tree.run("backup", str(data))  # the first, full, is not measured
        for n in range(args.backups):
            (data / "note-0.txt").write_bytes(os.urandom(20_000))
            for tree in trees if n % 2 else trees[::-1]:
                backups[tree.name].append(tree.run("backup", str(data)))
        report("backup", backups, trees)

        head = trees[1]
        counts = head.home / "state" / "wal-push-counts"
        sealing = []
        for n in range(args.pushes + 1, args.pushes + 6):
            for counter in counts.iterdir():
                if not counter.name.endswith(".json") and not counter.name.startswith("."):
                    counter.rename(counter.with_name(counter.name.split(".")[0] + ".20200101T10"))
            name = f"00000001000000{n // 256:02X}000000{n % 256:02X}"
            path = wal / name
            path.write_bytes(segment(name))
            sealing.append(head.run("wal-push", "emr", str(path)))
        print(
            f"wal-push sealing an hour's count (head): median "
            f"{statistics.median(sealing) * 1000:.1f} ms over {len(sealing)}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
