"""What recording a run costs: the spool observer alone, a tiny backup with and without it,
and a failed wal-push process against another checkout's (one without the observer).

    .venv/bin/python bench/recording_bench.py                       # all three
    .venv/bin/python bench/recording_bench.py --against /work/main  # the checkout to compare

Targets (issue 14): at most 50 ms added to a backup, 5 ms to a wal-push.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medvault.backends import open_backend
from medvault.repository.keys import Credential
from medvault.repository.repo import Repository
from medvault.service.backup import FilesBackupOptions, backup_files
from medvault.service.recording import SpoolObserver
from medvault.service.runs import Caller, RunRecord
from medvault.service.session import Session

PASSWORD = "bench-passphrase"
CALLER = Caller("bench", "cli", "bench")
# One cold observer call in a fresh interpreter: what a failed wal-push pays (json's import
# included, as on its light path nothing else has imported json).
COLD = """
import sys, time
from pathlib import Path
from medvault.service.recording import SpoolObserver
from medvault.service.runs import Caller, Run
from medvault.service.session import Session

session = Session(credentials=None, caller=Caller("b", "cli", "b"), state_dir=Path(sys.argv[1]))
record = Run("wal-push", session.caller, source="emr").record(time.time(), "failed", "x", None)
start = time.perf_counter()
SpoolObserver(session, only_failures=True).run_ended(record)
print((time.perf_counter() - start) * 1e6)
"""


class Given:
    def primary(self, settings: object) -> Credential:
        return Credential(passphrase=PASSWORD.encode())

    def other(self, settings: object) -> Credential:
        return self.primary(settings)


def record(number: int, status: str = "ok") -> RunRecord:
    return RunRecord(
        run_id=f"{os.getpid():08x}{number:08x}",
        operation="backup",
        source="emr",
        repository="/srv/vault",
        started="2026-03-01T02:00:00.000+00:00",
        ended="2026-03-01T02:00:04.000+00:00",
        duration_s=4.0,
        status=status,  # type: ignore[arg-type]
        bytes_read=1 << 30,
        bytes_stored=1 << 20,
        bytes_restored=0,
        snapshots=("ab" * 32,),
        error=None,
        user="postgres",
        host="db-1",
        shell="cli",
        details={"files": 1200},
        encryption="AES-256-GCM, BLAKE3-MAC",
        retention_policy="tier medical, floor 7y",
        compliance_flags=("hipaa",),
    )


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(share * len(ordered)), len(ordered) - 1)]


def observer_alone(workdir: Path, count: int) -> None:
    session = Session(credentials=Given(), caller=CALLER, state_dir=workdir / "state-observer")
    observer = SpoolObserver(session)
    samples = []
    for number in range(count):
        start = time.perf_counter()
        observer.run_ended(record(number))
        samples.append((time.perf_counter() - start) * 1e6)
    print(
        f"  spool one record (warm)       median {statistics.median(samples):7.0f} us"
        f"  p99 {percentile(samples, 0.99):7.0f} us  ({count} calls)"
    )
    failures = SpoolObserver(session, only_failures=True)
    ok = record(count + 1)
    start = time.perf_counter()
    for _ in range(count):
        failures.run_ended(ok)
    per_call = (time.perf_counter() - start) / count * 1e6
    print(f"  a successful wal-push's call  {per_call:14.2f} us (nothing written)")
    cold = []
    for round_ in range(20):
        directory = workdir / f"state-cold-{round_}"
        out = subprocess.run(
            [sys.executable, "-c", COLD, str(directory)], capture_output=True, text=True, check=True
        )
        cold.append(float(out.stdout))
    print(
        f"  spool one record (cold)       median {statistics.median(cold):7.0f} us"
        f"  max {max(cold):7.0f} us  (fresh interpreter, json imported by it; 20 runs)"
    )


def tiny_backups(workdir: Path, count: int) -> None:
    data = workdir / "data"
    data.mkdir()
    (data / "note.txt").write_bytes(b"BP 120/80\n")
    repo = workdir / "repo"
    Repository.init(open_backend(str(repo)), Credential(passphrase=PASSWORD.encode()))
    timings: dict[bool, list[float]] = {False: [], True: []}
    for number in range(2 * count + 2):
        spooling = number % 2 == 1
        session = Session(
            credentials=Given(), caller=CALLER, repository=str(repo), state_dir=workdir / "st"
        )
        if spooling:
            session.observers.append(SpoolObserver(session))
        start = time.perf_counter()
        backup_files(session, FilesBackupOptions(paths=(str(data),)))
        if number >= 2:  # the first of each: warm-up
            timings[spooling].append((time.perf_counter() - start) * 1000)
    without, with_ = statistics.median(timings[False]), statistics.median(timings[True])
    print(
        f"  tiny backup, no observer      median {without:7.2f} ms\n"
        f"  tiny backup, spooled          median {with_:7.2f} ms  "
        f"(added {with_ - without:+.2f} ms; {count} each, alternating)"
    )


def failed_wal_push(workdir: Path, against: Path | None, count: int) -> None:
    checkouts = {"this": Path(__file__).resolve().parent.parent}
    if against is not None:
        checkouts["against"] = against
    timings: dict[str, list[float]] = {name: [] for name in checkouts}
    for round_ in range(count + 1):
        for name, checkout in checkouts.items():
            env = {
                **{
                    k: v
                    for k, v in os.environ.items()
                    if not k.startswith("MEDVAULT_") and k != "PYTHONDONTWRITEBYTECODE"
                },
                "PYTHONPATH": str(checkout / "src"),
                # Byte-compiled by the warm-up round, outside either checkout: a stale .pyc
                # (PYTHONDONTWRITEBYTECODE) costs more than what is measured here.
                "PYTHONPYCACHEPREFIX": str(workdir / f"pycache-{name}"),
                "MEDVAULT_STATE_DIR": str(workdir / f"state-{name}"),
                "MEDVAULT_REPOSITORY": str(workdir / "repo"),
                "MEDVAULT_PASSWORD": PASSWORD,
            }
            missing = str(workdir / "pg_wal" / "000000010000000000000009")
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "medvault.cli.entry", "wal-push", "emr", missing],
                env=env,
                capture_output=True,
            )
            elapsed = (time.perf_counter() - start) * 1000
            assert done.returncode != 0
            if round_ > 0:
                timings[name].append(elapsed)
    for name, samples in timings.items():
        print(
            f"  failed wal-push, {name:<8}     median {statistics.median(samples):7.1f} ms "
            f"({checkouts[name]})"
        )
    spooled = len(list((workdir / "state-this" / "spool").glob("*.json")))
    print(f"  records spooled by this checkout's failed pushes: {spooled}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--backups", type=int, default=200)
    parser.add_argument("--pushes", type=int, default=40)
    parser.add_argument("--against", type=Path, help="a checkout without the spool observer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medvault-recording-bench-") as tmp:
        workdir = Path(tmp)
        print("Spool observer")
        observer_alone(workdir, args.calls)
        print("Backup")
        tiny_backups(workdir, args.backups)
        print("wal-push")
        failed_wal_push(workdir, args.against, args.pushes)


if __name__ == "__main__":
    main()
