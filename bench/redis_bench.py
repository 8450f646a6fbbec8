"""A Redis backup with medvault against the same by hand: `redis-cli --rdb -` piped through
zstd and openssl enc into a file.

    .venv/bin/python bench/redis_bench.py                  # 1 GiB of values, 3 rounds
    .venv/bin/python bench/redis_bench.py --size-gib 0.25 --rounds 2

A scratch redis-server on a free loopback port (saving nothing, in a temporary directory) is
filled with pipelined SETs: 1 KiB values of random hex (session tokens and JSON-like data
compress about as much), keys `session:N`. Then, alternately (A B A B ...):

A  `medvault backup redis` into a fresh local repository (initialised outside the timing):
   the RDB over the replication protocol, chunked, compressed, encrypted, stored;
B  `redis-cli --rdb - | zstd -3 -T0 | openssl enc -aes-256-ctr -pbkdf2 -pass file:KEY > FILE`;
C  `redis-cli --rdb - > /dev/null`: the transfer alone, the floor both stand on (the server's
   forked child writes the RDB, LZF-compressing its strings, as fast as it can).

Medians of wall time and of CPU (user + system of the command and its children; the server's
forked child that writes the RDB costs the same in both and is not counted). A second
medvault backup of the unchanged data into the same repository is measured once too: what
an hourly backup of a quiet cache costs once the data is stored.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from medvault.redisdb.resp import RedisAddress, connect

BIN = Path(sys.executable).parent
MEDVAULT = str(BIN / "medvault")
PASSWORD = "bench-passphrase"
VALUE_BYTES = 1024
BATCH = 5000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def measured(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def fill(port: int, size: int) -> int:
    keys = size // VALUE_BYTES
    with connect(RedisAddress("127.0.0.1", port, None, 0, None), None, timeout=None) as conn:
        for start in range(0, keys, BATCH):
            batch = [
                ("SET", f"session:{n}", secrets.token_hex(VALUE_BYTES // 2))
                for n in range(start, min(keys, start + BATCH))
            ]
            conn.pipeline(batch)  # type: ignore[arg-type]
    return keys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medvault-redis-bench-"))
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            # Both sides would wait the default 5 s for other replicas before a diskless
            # transfer starts: measured without it (docs/redis.md says what it costs).
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            str(work),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.05)
        began = time.perf_counter()
        keys = fill(port, int(args.size_gib * 2**30))
        print(f"filled {keys} keys in {time.perf_counter() - began:.0f} s", flush=True)
        (work / "medvault.toml").write_text(
            f'[source.redis]\nkind = "redis"\nurl = "redis://127.0.0.1:{port}/0"\n'
        )
        key_file = work / "enc.key"
        key_file.write_text(secrets.token_hex(32))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")} | {
            "MEDVAULT_PASSWORD": PASSWORD,
            "MEDVAULT_STATE_DIR": str(work / "state"),
        }
        by_hand = (
            f"set -o pipefail; redis-cli -p {port} --rdb - 2>/dev/null | zstd -q -3 -T0 | "
            f"openssl enc -aes-256-ctr -pbkdf2 -pass file:{key_file} > {work / 'dump.rdb.zst.enc'}"
        )
        floor = f"set -o pipefail; redis-cli -p {port} --rdb - 2>/dev/null | cat > /dev/null"
        figures: dict[str, list[tuple[float, float]]] = {
            "medvault": [],
            "by hand": [],
            "transfer": [],
        }
        sizes: dict[str, int] = {}
        for round_ in range(args.rounds):
            repo = work / f"repo-{round_}"
            subprocess.run(
                [MEDVAULT, "--repo", str(repo), "init"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            command = [MEDVAULT, "--repo", str(repo), "backup", "redis"]
            figures["medvault"].append(measured(command, env, work))
            sizes["medvault"] = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())
            figures["by hand"].append(measured(["bash", "-c", by_hand], env, work))
            sizes["by hand"] = (work / "dump.rdb.zst.enc").stat().st_size
            figures["transfer"].append(measured(["bash", "-c", floor], env, work))
            sizes["transfer"] = 0
            if round_ > 0:
                shutil.rmtree(work / f"repo-{round_ - 1}")
            print(round_, {k: v[-1] for k, v in figures.items()}, flush=True)
        last = work / f"repo-{args.rounds - 1}"
        again = measured([MEDVAULT, "--repo", str(last), "backup", "redis"], env, work)
        target_port = free_port()
        target = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(target_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(work),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            restore = measured(
                [
                    MEDVAULT,
                    "--repo",
                    str(last),
                    "restore",
                    "latest:redis",
                    "--redis-url",
                    f"redis://127.0.0.1:{target_port}/0",
                ],
                env,
                work,
            )
            drill = measured([MEDVAULT, "--repo", str(last), "drill", "redis"], env, work)
        finally:
            target.kill()
            target.wait()
        rdb = subprocess.run(
            ["bash", "-c", f"redis-cli -p {port} --rdb - 2>/dev/null | wc -c"],
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"keys {keys}, RDB {int(rdb.stdout) / 2**20:.0f} MiB")
        for name, runs in figures.items():
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            print(
                f"{name:>9}: wall {wall:.2f} s, CPU {cpu:.2f} s, "
                f"stored {sizes[name] / 2**20:.0f} MiB"
            )
        print(
            "medvault again (unchanged data, same repository): "
            f"wall {again[0]:.2f} s, CPU {again[1]:.2f} s"
        )
        print(f"restore into a running server: wall {restore[0]:.2f} s, CPU {restore[1]:.2f} s")
        print(f"drill: wall {drill[0]:.2f} s, CPU {drill[1]:.2f} s")
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
