"""`metrics`: one reading (service/observe.py) and the catalog's run counts in Prometheus'
text format, for serve's `/metrics` and for node_exporter's textfile collector (`medvault
metrics --textfile DIR` from cron). Not a run: like `runs` and `stats` it reads no patient
data, and a scrape every 15 s would bury the run history it reads.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from medvault.errors import MedvaultError, UsageError, first_line
from medvault.monitoring.facts import RunningJob
from medvault.monitoring.metrics import DURATION_BUCKETS, RunCounts, registry
from medvault.service.observe import gather

if TYPE_CHECKING:
    from medvault.service.session import Session

# The name node_exporter's textfile collector reads (*.prom in its directory).
TEXTFILE_NAME = "medvault.prom"


def metrics_text(
    session: Session,
    *,
    running: Sequence[RunningJob] = (),
    now: dt.datetime | None = None,
) -> bytes:
    """Every medvault metric now, in the Prometheus text exposition format."""
    from prometheus_client.exposition import generate_latest

    from medvault import __version__

    observations = gather(session, running=running, now=now)
    return generate_latest(registry(observations, run_counts(session), __version__))


def run_counts(session: Session) -> RunCounts | None:
    """The catalog's runs per operation and status, and their durations per operation;
    None when the catalog cannot be read (gather notes why)."""
    from medvault.service.history import open_catalog

    try:
        with open_catalog(session) as catalog:
            histograms = catalog.duration_histograms(DURATION_BUCKETS)
            return RunCounts(
                runs=catalog.run_counts(),
                durations={h.operation: (h.at_most, h.runs, h.sum_s) for h in histograms},
            )
    except MedvaultError:
        return None


def write_textfile(session: Session, directory: Path) -> Path:
    """Write medvault.prom into `directory` atomically: a temporary file in the same
    directory, then a rename, so the collector never reads half a file."""
    if not directory.is_dir():
        raise UsageError(f"--textfile {directory}: not a directory")
    text = metrics_text(session)
    target = directory / TEXTFILE_NAME
    try:
        # Its name does not end in .prom, so the collector skips it until renamed.
        fd, temporary = tempfile.mkstemp(prefix=".medvault.prom.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o644)  # node_exporter often runs as another user
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise UsageError(
            f"--textfile {directory}: cannot write {TEXTFILE_NAME}: {first_line(exc)}"
        ) from None
    return target
