"""medvault on a local S3-compatible server against medvault on a local disk, and `medvault
copy` to a second site against `rclone sync` of the same objects, on the same data in one
run (`make bench-s3`).

Phases (tools alternate A B / B A across rounds; the table quotes medians):
- backup: a full backup into a fresh repository, then a restore of it into an empty
  directory, once to a local directory and once to a fresh bucket of the S3 server (moto's,
  on 127.0.0.1, the one the tests use). Target: S3 within 1.5x of local for both.
- copy: a local repository holding the full backup goes to a fresh bucket three ways:
  `medvault copy` to a repository sharing its keys (`init --copy-keys-from`: packs move as
  stored), `rclone sync` of the repository's directory (the same objects, no medvault), and
  `medvault copy` to a repository with its own keys (every blob re-encrypted). Targets:
  shared keys at least as fast as rclone, own keys within 2x.
Raw samples go to bench/results/s3-<timestamp>.json. See bench/README.md.
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

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

import datagen  # noqa: E402
from tests.s3server import S3Server  # noqa: E402
from tools import run_measured  # noqa: E402

MEDVAULT = str(Path(sys.executable).parent / "medvault")
PASSWORD = "bench passphrase for the s3 run"
TARGETS = {
    "backup_s": ("s3", "local", 1.5),
    "restore_s": ("s3", "local", 1.5),
    "copy_s": ("medvault-shared", "rclone", 1.0),
    "copy_reencrypt_s": ("medvault-reencrypt", "rclone", 2.0),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def settle() -> None:
    subprocess.run(["sync"], check=False)


class Bench:
    def __init__(self, workdir: Path, server: S3Server) -> None:
        self.workdir = workdir
        self.server = server
        self.env = (
            {k: v for k, v in os.environ.items() if not k.startswith(("MEDVAULT_", "AWS_"))}
            | server.env
            | {"MEDVAULT_PASSWORD": PASSWORD, "LC_ALL": "C.UTF-8"}
        )

    def medvault(self, *args: str) -> float:
        return run_measured([MEDVAULT, *args], self.env, self.workdir).seconds

    def empty_bucket(self, bucket: str) -> None:
        """Free the server's memory and disk between samples."""
        client = self.server.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for start in range(0, len(keys), 1000):
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys[start : start + 1000]})
        client.delete_bucket(Bucket=bucket)

    def rclone_sync(self, source: Path, bucket: str) -> float:
        env = self.env | {
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": self.server.endpoint,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.server.env["AWS_ACCESS_KEY_ID"],
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.server.env["AWS_SECRET_ACCESS_KEY"],
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        }
        argv = ["rclone", "sync", str(source), f"bench:{bucket}/secondary"]
        return run_measured(argv, env, self.workdir).seconds


def backup_phase(bench: Bench, data: Path, rounds: int) -> dict[str, list[dict[str, float]]]:
    samples: dict[str, list[dict[str, float]]] = {"local": [], "s3": []}
    for number in range(rounds):
        order = ["local", "s3"] if number % 2 == 0 else ["s3", "local"]
        log(f"backup round {number + 1}/{rounds}: {' '.join(order)}")
        for where in order:
            bucket = None
            if where == "local":
                repo = str(bench.workdir / f"local-{number}")
            else:
                bucket = bench.server.new_bucket()
                repo = f"s3://{bucket}/repo"
            bench.medvault("--repo", repo, "init")
            settle()
            backup = bench.medvault("--repo", repo, "backup", str(data))
            out = bench.workdir / "restored"
            settle()
            restore = bench.medvault("--repo", repo, "restore", "latest", "--target", str(out))
            shutil.rmtree(out)
            samples[where].append({"backup_s": backup, "restore_s": restore})
            log(f"  {where}: backup {backup:.2f} s, restore {restore:.2f} s")
            if bucket is not None:
                bench.empty_bucket(bucket)
            else:
                shutil.rmtree(repo)
    return samples


def copy_phase(bench: Bench, data: Path, rounds: int) -> dict[str, list[dict[str, float]]]:
    primary = bench.workdir / "primary"
    bench.medvault("--repo", str(primary), "init")
    bench.medvault("--repo", str(primary), "backup", str(data))
    size = sum(f.stat().st_size for f in primary.rglob("*") if f.is_file())
    log(f"primary repository: {size / 2**30:.2f} GiB")
    tools = ["medvault-shared", "rclone", "medvault-reencrypt"]
    samples: dict[str, list[dict[str, float]]] = {tool: [] for tool in tools}
    for number in range(rounds):
        order = tools if number % 2 == 0 else list(reversed(tools))
        log(f"copy round {number + 1}/{rounds}: {' '.join(order)}")
        for tool in order:
            bucket = bench.server.new_bucket()
            target = f"s3://{bucket}/secondary"
            settle()
            if tool == "rclone":
                seconds = bench.rclone_sync(primary, bucket)
            else:
                shared = ["--copy-keys-from", str(primary)] if tool == "medvault-shared" else []
                bench.medvault("--repo", target, "init", *shared)
                seconds = bench.medvault("copy", "--from", str(primary), "--to", target)
            key = "copy_reencrypt_s" if tool == "medvault-reencrypt" else "copy_s"
            samples[tool].append({key: seconds, "repository_bytes": size})
            log(f"  {tool}: {seconds:.2f} s ({size / seconds / 2**20:.0f} MiB/s)")
            bench.empty_bucket(bucket)
    return samples


def medians(samples: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for tool, rows in samples.items():
        keys = {k for row in rows for k in row}
        out[tool] = {k: statistics.median(row[k] for row in rows if k in row) for k in keys}
    return out


def render(found: dict[str, dict[str, float]]) -> list[str]:
    lines = [f"{'metric':<40} {'medvault':>10} {'reference':>10} {'ratio':>7}  target   verdict"]
    for metric, (tool, reference, limit) in TARGETS.items():
        if tool not in found or reference not in found:
            continue
        mine = found[tool].get(metric)
        theirs = found[reference].get(metric.replace("_reencrypt", ""))
        if mine is None or theirs is None:
            continue
        ratio = mine / theirs
        verdict = "PASS" if ratio <= limit else "MISS"
        label = f"{metric} ({tool} vs {reference})"
        lines.append(
            f"{label:<40} {mine:>10.2f} {theirs:>10.2f} {ratio:>6.2f}x  <= {limit:.1f}x  {verdict}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--phases", default="backup,copy")
    parser.add_argument("--results-dir", default=str(BENCH_DIR / "results"))
    args = parser.parse_args(argv)
    if shutil.which("rclone") is None:
        print("rclone is missing: run `scripts/bootstrap.sh bench`", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="medvault-s3bench-"))
    server = S3Server()
    samples: dict[str, list[dict[str, float]]] = {}
    try:
        log(f"generating {args.size_gib} GiB of data")
        data = workdir / "data"
        datagen.generate(data, args.size_gib, args.seed)
        bench = Bench(workdir, server)
        phases = args.phases.split(",")
        if "backup" in phases:
            samples |= backup_phase(bench, data, args.rounds)
        if "copy" in phases:
            samples |= copy_phase(bench, data, args.rounds)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    found = medians(samples)
    print()
    print(
        f"S3 (moto on 127.0.0.1) vs local disk, and copy vs rclone sync: {args.size_gib} GiB, "
        f"{args.rounds} round(s), medians"
    )
    for line in render(found):
        print(line)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = results / f"s3-{stamp}.json"
    out.write_text(json.dumps({"args": vars(args), "samples": samples, "medians": found}, indent=2))
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
