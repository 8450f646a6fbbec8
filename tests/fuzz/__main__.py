"""`make fuzz`: every harness under atheris, one process each, then the count per harness.

    python -m tests.fuzz [--scale F] [--jobs N] [HARNESS ...]

Each harness runs for its own number of inputs (Harness.runs, times --scale); together they
come to more than a million at scale 1. The corpus each run grows is kept in .fuzz/corpus
(git ignores .fuzz/) and seeded anew every run; crashing inputs go to .fuzz/crashes, logs to
.fuzz/logs. Exit status 1 when any harness crashed or, at full scale, when fewer than
1,000,000 inputs ran.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz.harnesses import HARNESSES, Harness, printable

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".fuzz"
REQUIRED_TOTAL = 1_000_000
MAX_LEN = 20_000  # bytes per input: deep enough nesting for any recursion limit
TIMEOUT_S = 60  # libFuzzer's own per-input alarm, beyond the harnesses' CPU budget


@dataclass
class Outcome:
    harness: Harness
    runs: int = 0
    seconds: float = 0.0
    crash: str = ""  # what happened, and the input


def _write_seeds(harness: Harness, corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in harness.seeds():
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed[:MAX_LEN])


def run_one(harness: Harness, runs: int) -> Outcome:
    corpus = WORK / "corpus" / harness.name
    crashes = WORK / "crashes"
    logs = WORK / "logs"
    scratch = WORK / "scratch" / harness.name
    for folder in (crashes, logs):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(scratch)}
    outcome = Outcome(harness)
    log = logs / f"{harness.name}.log"
    started = time.monotonic()
    try:
        _write_seeds(harness, corpus)
        with log.open("w") as out:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tests.fuzz.target",
                    harness.name,
                    f"-runs={runs}",
                    f"-max_len={MAX_LEN}",
                    f"-timeout={TIMEOUT_S}",
                    "-rss_limit_mb=4096",
                    f"-artifact_prefix={crashes}/{harness.name}-",
                    "-print_final_stats=1",
                    str(corpus),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        outcome.seconds = time.monotonic() - started
        text = log.read_text(errors="replace")
        found = re.search(r"^Done (\d+) runs", text, re.MULTILINE)
        executed = re.findall(r"^stat::number_of_executed_units: (\d+)", text, re.MULTILINE)
        outcome.runs = int(found.group(1)) if found else int(executed[-1]) if executed else 0
        if done.returncode != 0 or not found:
            outcome.crash = _describe_crash(text, log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return outcome


def _describe_crash(text: str, log: Path) -> str:
    lines = text.splitlines()
    error = next(
        (line for line in reversed(lines) if re.match(r"^\w+(Error|Exception)\b", line)), ""
    )
    unit = re.search(r"Test unit written to (\S+)", text)
    where = f"input {unit.group(1)}" if unit else f"see {log}"
    if unit and Path(unit.group(1)).exists():
        where += f" = {printable(Path(unit.group(1)).read_bytes())}"
    return f"{error or 'libFuzzer stopped'}; {where}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    parser.add_argument("harnesses", nargs="*", help="run only these (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="times each harness's runs")
    parser.add_argument("--jobs", type=int, default=1, help="harnesses at once")
    args = parser.parse_args()
    unknown = set(args.harnesses) - set(HARNESSES)
    if unknown:
        parser.error(f"no harness {', '.join(sorted(unknown))}; known: {', '.join(HARNESSES)}")
    chosen = [HARNESSES[n] for n in args.harnesses or HARNESSES]
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = list(pool.map(lambda h: run_one(h, max(1, round(h.runs * args.scale))), chosen))
    return report(outcomes, time.monotonic() - began, full=not args.harnesses and args.scale >= 1)


def report(outcomes: list[Outcome], seconds: float, *, full: bool) -> int:
    failed = False
    print(f"\n{'harness':<22} {'inputs':>9} {'seconds':>8}  result")
    for o in outcomes:
        if o.crash:
            result = f"CRASH: {o.crash}"
            failed = True
        else:
            result = "ok"
        print(f"{o.harness.name:<22} {o.runs:>9,} {o.seconds:>8.1f}  {result}")
    total = sum(o.runs for o in outcomes)
    print(f"{'total':<22} {total:>9,} {seconds:>8.1f}")
    if full and total < REQUIRED_TOTAL:
        print(f"\nonly {total:,} inputs ran; `make fuzz` promises {REQUIRED_TOTAL:,}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
