"""`medvault audit verify` over a large audit trail (issue 14's target: 100,000 records in
under 10 s).

Writes `--records` audit records into a fresh local repository, spread over `--chains` host
chains, then times `medvault audit verify` (the whole process: start-up, key derivation,
listing, opening and checking every record) `--runs` times and reports the median.

The records are written by a bulk writer used only here: each is built, MACed and sealed
exactly as `AuditLog.append` does (same canonical JSON, same MAC, same sealing bound to its
name), but written as a plain file without the per-object fsyncs of the local backend
(100,000 fsyncs would take the bench minutes and measure the disk, not verification).

    .venv/bin/python bench/audit_bench.py                 # 100,000 records, 4 chains, 3 runs
    .venv/bin/python bench/audit_bench.py --records 20000 --runs 1
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
from pathlib import Path

HEAD = Path(__file__).resolve().parent.parent
PASSWORD = "bench-correct-horse-battery-staple"
TARGET_S = 10.0


def run_record(index: int, host: str) -> dict[str, object]:
    """A plausible run record (the fields the observer seals), varied a little."""
    started = 1_790_000_000 + index * 60
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started))
    ended = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started + 42))
    operation = ("backup", "restore", "check", "forget", "wal-fetch")[index % 5]
    return {
        "run_id": f"{index:016x}",
        "operation": operation,
        "source": f"emr-{index % 7}",
        "repository": "/srv/medvault/repo",
        "started": f"{stamp}.000+00:00",
        "ended": f"{ended}.000+00:00",
        "timestamp": f"{ended}.000+00:00",
        "duration_s": 42.0,
        "status": "ok" if index % 13 else "failed",
        "bytes_read": index * 1000,
        "bytes_stored": index * 10,
        "bytes_restored": 0,
        "snapshots": [f"{index:064x}"] if operation == "backup" else [],
        "error": None if index % 13 else "could not read /srv/emr/locked.db",
        "user": "root",
        "host": host,
        "shell": "cli",
        "details": {"kind": "files", "type": "incremental"},
        "destination": None,
        "data_classification": "phi",
        "encryption": "AES-256-GCM, BLAKE3-MAC",
        "retention_policy": "tier medical, floor 7y",
        "compliance_flags": ["hipaa"],
        "recovery_point": None,
        "justification": None,
        "approver": None,
    }


def write_records(location: Path, records: int, chains: int) -> float:
    """The bulk writer: `records` records over `chains` hosts; returns the seconds taken."""
    sys.path.insert(0, str(HEAD / "src"))
    from medvault.backends import open_backend
    from medvault.repository import compression
    from medvault.repository.audit import KIND_AUDIT, AuditEntry, AuditLog, canonical
    from medvault.repository.crypto import record_aad, seal_object
    from medvault.repository.keys import Credential
    from medvault.repository.repo import METADATA_ZSTD_LEVEL, Repository

    started = time.perf_counter()
    repo = Repository.open(open_backend(str(location)), Credential(passphrase=PASSWORD.encode()))
    for number in range(chains):
        log = AuditLog(repo, f"ward-{number}")
        chain = log.chain
        folder = location / "audit" / chain
        folder.mkdir(parents=True, exist_ok=True)
        prev = ""
        for seq in range(records // chains + (number < records % chains)):
            record = run_record(seq * chains + number, log.host)
            body = AuditEntry(chain, seq, prev, "run", record, "").body()
            mac = log.mac(body)
            entry = AuditEntry(chain, seq, prev, "run", record, mac)
            payload = compression.encode(canonical({**body, "mac": mac}), METADATA_ZSTD_LEVEL)
            name = entry.name
            sealed = seal_object(repo.master.current, payload, record_aad(KIND_AUDIT, name))
            path = location / name
            path.write_bytes(sealed)
            path.chmod(0o600)
            prev = mac
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medvault-audit-bench-", dir=args.workdir))
    try:
        location = work / "repo"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")} | {
            "MEDVAULT_PASSWORD": PASSWORD,
            "MEDVAULT_REPOSITORY": str(location),
            "MEDVAULT_STATE_DIR": str(work / "state"),
        }
        exe = str(HEAD / ".venv" / "bin" / "medvault")
        subprocess.run([exe, "init"], env=env, check=True, capture_output=True)
        wrote = write_records(location, args.records, args.chains)
        print(f"wrote {args.records} records in {args.chains} chains in {wrote:.1f} s")
        subprocess.run(["sync"], check=True)
        times, cpus = [], []
        for number in range(args.runs):
            before = os.times()
            started = time.perf_counter()
            done = subprocess.run(
                [exe, "audit", "verify", "--json"], env=env, capture_output=True, text=True
            )
            took = time.perf_counter() - started
            after = os.times()
            if done.returncode != 0:
                raise SystemExit(f"audit verify failed: {done.stdout}{done.stderr}")
            verified = json.loads(done.stdout)
            cpu = (after.children_user - before.children_user) + (
                after.children_system - before.children_system
            )
            times.append(took)
            cpus.append(cpu)
            print(f"run {number + 1}: {took:.2f} s wall, {cpu:.2f} s CPU ({verified['records']})")
        median = statistics.median(times)
        load = os.getloadavg()[0]
        verdict = "PASS" if median < TARGET_S else "MISS"
        print(
            f"audit verify of {args.records} records: median {median:.2f} s wall "
            f"({statistics.median(cpus):.2f} s CPU), {median / args.records * 1e6:.0f} us per "
            f"record; target < {TARGET_S:.0f} s: {verdict} (load {load:.1f}, "
            f"{os.cpu_count()} cores)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
