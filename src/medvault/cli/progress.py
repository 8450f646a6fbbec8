"""A progress bar that appears with the first progress a service call reports.

A service call opens its repositories itself, and opening may prompt for a passphrase on the
terminal: a bar drawn from the start would write over the prompt. So the bar starts when the
work starts, as it did when the command opened the repository before drawing it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from medvault.cli.context import progress_bar


@contextlib.contextmanager
def progress_once_started(label: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A callback for `on_progress` (called from worker threads too)."""
    with contextlib.ExitStack() as stack:
        started = threading.Lock()
        advance: list[Callable[[int], None]] = []

        def on_progress(count: int) -> None:
            if not advance:
                with started:
                    if not advance:
                        advance.append(stack.enter_context(progress_bar(label, None, enabled)))
            advance[0](count)

        yield on_progress
