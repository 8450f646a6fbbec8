"""Named fault points, where tests stop a real medvault process at a chosen moment.

Production code marks the moments that matter for crash safety and for races with
`point("prune.before-record")`. Unless a test asks for it, a point costs one dict lookup.

A test arms points for a child process through the environment variable MEDVAULT_FAULTS, a
comma-separated list of `NAME=ACTION`:

- `kill`: SIGKILL this process at the point (a crash, an OOM kill, a power cut of the host);
- `pause:DIR`: create `DIR/NAME.reached`, then wait until `DIR/NAME.go` exists, so that the
  test can run another command in exactly that window (an interleaving, not a sleep);
- `fail`: raise OSError(EIO) at the point, as a failing disk or network would.

In-process tests use `armed({"name": callable})` instead. The variable is read once, at
import; a child process started by medvault never inherits it (child environments are
explicit), and it carries no secret.

Every point, and what a crash there leaves, is listed in docs/architecture.md ("Fault
points"); tests/test_fault_injection.py kills a process at each one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ENV = "MEDVAULT_FAULTS"
PAUSE_TIMEOUT = 600.0


def _parse(spec: str) -> dict[str, str]:
    actions = {}
    for item in spec.split(","):
        name, eq, action = item.strip().partition("=")
        if name and eq:
            actions[name] = action
    return actions


_actions: dict[str, str] = _parse(os.environ.get(ENV, ""))
_hooks: dict[str, Callable[[], None]] = {}


def point(name: str) -> None:
    """A named moment; does nothing unless a test armed it."""
    if not _actions and not _hooks:
        return
    hook = _hooks.get(name)
    if hook is not None:
        hook()
    action = _actions.get(name)
    if action is not None:
        _perform(name, action)


def _perform(name: str, action: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "fail":
        raise OSError(errno.EIO, f"fault injected at {name}")
    elif action.startswith("pause:"):
        folder = Path(action.removeprefix("pause:"))
        (folder / f"{name}.reached").touch()
        deadline = time.monotonic() + PAUSE_TIMEOUT
        while not (folder / f"{name}.go").exists() and time.monotonic() < deadline:
            time.sleep(0.005)


@contextlib.contextmanager
def armed(hooks: dict[str, Callable[[], None]]) -> Iterator[None]:
    """Run callables at named points in this process while the block runs."""
    _hooks.update(hooks)
    try:
        yield
    finally:
        for name in hooks:
            _hooks.pop(name, None)
