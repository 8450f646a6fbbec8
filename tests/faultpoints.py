"""Drive medvault's named fault points (src/medvault/faults.py) from a test."""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest


def faults_env(**actions: str) -> dict[str, str]:
    """{"MEDVAULT_FAULTS": ...} arming the given points; names use '.' and '-', so pass them
    as a dict: faults_env(**{"prune.before-record": "kill"})."""
    return {"MEDVAULT_FAULTS": ",".join(f"{name}={action}" for name, action in actions.items())}


class Pause:
    """A `pause:DIR` point: wait until a process reaches it, then let it go on."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def action(self) -> str:
        return f"pause:{self.folder}"

    def reached(self) -> bool:
        return (self.folder / f"{self.name}.reached").exists()

    def wait(self, proc: subprocess.Popen[str] | None = None, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.reached():
            if proc is not None and proc.poll() is not None:
                _out, err = proc.communicate()
                raise AssertionError(f"{self.name} never reached; exit {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not reached within {timeout} s")
            time.sleep(0.005)

    def release(self) -> None:
        (self.folder / f"{self.name}.go").touch()


# -- what the fault-injection suite counts -------------------------------------------------

SOURCE = Path(__file__).resolve().parent.parent / "src" / "medvault"
_POINT = re.compile(r'faults\.point\("([^"]+)"\)')
TALLY = "fault_tally"  # the user property a test's counts travel in (also across xdist)


def points_in_source() -> set[str]:
    """Every fault point named in medvault's code."""
    return {m for path in SOURCE.rglob("*.py") for m in _POINT.findall(path.read_text())}


class Tallies:
    """The counts of the tests that passed, summed on the controlling process."""

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self._passed: set[str] = set()

    def add(self, report: pytest.TestReport) -> None:
        if report.when == "call" and report.passed:
            self._passed.add(report.nodeid)
        if report.when == "teardown" and report.nodeid in self._passed:
            for name, value in report.user_properties:
                if name == TALLY:
                    self.totals.update(value)

    def lines(self) -> list[str]:
        t = self.totals
        if not t:
            return []
        killed = {k.split(":", 1)[1]: n for k, n in t.items() if k.startswith("point:")}
        s3 = {k.split(":", 1)[1]: n for k, n in t.items() if k.startswith("s3:")}
        lines = []
        if killed:
            lines.append(
                f"kill points: {len(killed)} of the {len(points_in_source())} named in the code, "
                f"{sum(killed.values())} runs killed by SIGKILL; after each, check --read-data "
                "clean and every earlier snapshot restored"
            )
            lines.append(
                f"interrupted commands run again: {t['reruns']}; stale locks left by killed "
                f"runs: {t['stale locks']} (none blocked the next command; "
                f"{t['stale locks named']} named by it in a warning)"
            )
        lines.append(
            f"snapshots restored byte for byte: {t['snapshots restored']}; check --read-data "
            f"runs without error: {t['checks clean']}"
        )
        if s3:
            shown = ", ".join(f"{kind} {n}" for kind, n in sorted(s3.items()))
            lines.append(f"S3 faults injected: {sum(s3.values())} ({shown})")
        full = t["disk full: repository"] + t["disk full: restore target"]
        if full:
            lines.append(
                f"disk full: {t['disk full: repository']} on the repository, "
                f"{t['disk full: restore target']} on the restore target"
            )
        return lines
