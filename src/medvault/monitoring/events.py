"""Alert events: what the alert rules decide and the notification channels carry."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

SEVERITIES = ("warning", "critical", "emergency")  # ascending
FIRING, RESOLVED = "firing", "resolved"


@dataclass(frozen=True)
class AlertEvent:
    """One alert's state as sent: `key` identifies it across evaluations (rule and what it
    is about), so a repeat or a resolution names the same alert."""

    key: str
    rule: str  # backup_stale, job_failures, backup_running_long, storage_full, wal_lag, …
    severity: str  # one of SEVERITIES
    state: str  # FIRING or RESOLVED
    summary: str  # one line a person reads first
    message: str
    started: dt.datetime
    ended: dt.datetime | None = None
    source: str | None = None
    repository: str | None = None
    labels: dict[str, str] = field(default_factory=dict)  # extra identifying labels
    test: bool = False  # `alerts test`: says so in every channel
