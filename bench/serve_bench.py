"""What `medvault serve` costs: idle (a schedule that does not fire, the watch loop reading
every minute, Prometheus scraping /metrics every 15 s) in CPU share and memory, and a
scheduled backup against the CLI's run of the same job.

    .venv/bin/python bench/serve_bench.py                   # 0.25 GiB, 180 s idle, 4 rounds
    .venv/bin/python bench/serve_bench.py --size-gib 1 --idle-s 600 --rounds 6

Targets (issue 15): idle under 1 % of a core and 150 MB RSS; a scheduled backup pays no
more than the CLI's. A scheduled job is the child process serve launches
(`python -m medvault.cli.jobrun --config FILE --job NAME`), so the A/B runs that command
and `medvault backup` alternately on the same tree (both full: every file read again) and
compares wall time and CPU (user + system of the child and its children).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datagen import generate

BIN = Path(sys.executable).parent
MEDVAULT = str(BIN / "medvault")
PASSWORD = "bench-passphrase"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cpu_s(pid: int) -> float:
    """User + system seconds of `pid` itself (not its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in MB."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def measured(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and everything it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def idle(work: Path, env: dict[str, str], config: Path, seconds: float) -> dict[str, float]:
    port = free_port()
    log = (work / "serve.log").open("w")
    serve = subprocess.Popen(
        [MEDVAULT, "--config", str(config), "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        time.sleep(75)  # past start-up and the first readings: what is left is the idle
        cpu0, t0 = cpu_s(serve.pid), time.monotonic()
        scrapes = 0
        while time.monotonic() - t0 < seconds:
            urllib.request.urlopen(f"{url}/metrics", timeout=10).read()
            scrapes += 1
            time.sleep(15)
        cpu1, t1 = cpu_s(serve.pid), time.monotonic()
        rss, peak = memory(serve.pid)
    finally:
        serve.terminate()
        serve.wait(timeout=120)
    return {
        "idle_s": round(t1 - t0, 1),
        "scrapes": scrapes,
        "cpu_s": round(cpu1 - cpu0, 3),
        "cpu_share_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(peak, 1),
    }


def ab(env: dict[str, str], config: Path, rounds: int) -> dict[str, dict[str, float]]:
    runner = [sys.executable, "-m", "medvault.cli.jobrun", "--config", str(config)]
    commands = {
        "scheduled": [*runner, "--job", "docs/full"],
        "cli": [MEDVAULT, "--config", str(config), "backup", "docs", "--type", "full"],
    }
    taken: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, command in commands.items():  # A B A B: the machine's drift hits both
            taken[name].append(measured(command, env))
    result = {}
    for name, samples in taken.items():
        result[name] = {
            "wall_s_median": round(statistics.median(w for w, _ in samples), 3),
            "cpu_s_median": round(statistics.median(c for _, c in samples), 3),
        }
    result["ratio_scheduled_to_cli"] = {
        "wall": round(result["scheduled"]["wall_s_median"] / result["cli"]["wall_s_median"], 3),
        "cpu": round(result["scheduled"]["cpu_s_median"] / result["cli"]["cpu_s_median"], 3),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=0.25)
    parser.add_argument("--idle-s", type=float, default=180.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medvault-serve-bench-") as scratch:
        work = Path(scratch)
        tree = work / "tree"
        generate(tree, args.size_gib, seed=15)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")} | {
            "MEDVAULT_PASSWORD": PASSWORD,
            "MEDVAULT_STATE_DIR": str(work / "state"),
        }
        config = work / "medvault.toml"
        config.write_text(
            f'[repository.main]\nurl = "{work / "vault"}"\n\n'
            f'[tier.clinical]\nrpo = "1d"\n\n'
            f'[source.docs]\nkind = "files"\npaths = ["{tree}"]\ntier = "clinical"\n\n'
            # Fires at 03:00 only: the idle measurement sees the service waiting.
            '[source.docs.schedule]\nfull = "0 3 * * *"\n'
        )
        subprocess.run(
            [MEDVAULT, "--repo", str(work / "vault"), "init"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [MEDVAULT, "--config", str(config), "backup", "docs"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        report = {
            "size_gib": args.size_gib,
            "ab": ab(env, config, args.rounds),
            "idle": idle(work, env, config, args.idle_s),
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
