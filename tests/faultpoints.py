"""Drive medvault's named fault points (src/medvault/faults.py) from a test."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


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
