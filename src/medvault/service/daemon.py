"""`serve`'s core, beside its HTTP listener: the scheduler firing jobs (each a child process,
scheduler/ and service/jobs.py), and a watch loop that every `[alerts] evaluate_every`, and
whenever a job ends, gathers the observations (service/observe.py), evaluates the alert
rules (service/alerting.py), delivers what is due (service/notify.py) and renders the
metrics /metrics serves (service/metrics.py).

The watch loop is the only user of the session: HTTP handlers read what it left (metrics
text, health), so a slow repository never stalls a scrape and nothing is computed twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medvault.durations import parse_duration

if TYPE_CHECKING:
    from medvault.monitoring.facts import RunningJob
    from medvault.service.session import Session

log = logging.getLogger("medvault.serve")

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Health:
    healthy: bool
    started: dt.datetime | None
    last_cycle: dt.datetime | None  # the watch loop's last completed reading
    last_cycle_error: str | None
    running_jobs: tuple[str, ...]
    firing_alerts: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "started": self.started.isoformat() if self.started else None,
            "last_cycle": self.last_cycle.isoformat() if self.last_cycle else None,
            "last_cycle_error": self.last_cycle_error,
            "running_jobs": list(self.running_jobs),
            "firing_alerts": self.firing_alerts,
        }
