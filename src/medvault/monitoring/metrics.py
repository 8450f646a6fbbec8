"""Prometheus metrics from one reading (facts.Observations) and the catalog's run counts.

Pure: a custom collector builds every family at scrape time from what it is handed, so a
reading is exposed exactly as taken and nothing accumulates between readings. Names follow
Prometheus' conventions: the `medvault_` prefix, base units (`_seconds`, `_bytes`, ratios
0..1), counters ending in `_total`, `_info` for metadata. Labels are bounded: configured
source and repository names, operations, statuses, snapshot kinds — never a snapshot id, a
path or an error text. docs/metrics.md describes every family.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from medvault.monitoring.facts import Observations, RepositoryFacts

# Run durations, 1 s to 4 h: a wal-push takes a second, a large cluster's backup hours.
DURATION_BUCKETS = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
)
STATUSES = ("ok", "failed", "incomplete", "refused")
# Every operation a run is recorded for (service/: session.run(...)); each gets its counters
# at 0 from the first scrape, so increase() sees the first run of each.
OPERATIONS = (
    "alert",
    "alert-silence",
    "alert-test",
    "alert-unsilence",
    "audit-export",
    "audit-verify",
    "backup",
    "check",
    "copy",
    "diff",
    "drill",
    "drills",
    "forget",
    "hold-add",
    "hold-list",
    "hold-remove",
    "init",
    "key-add",
    "key-list",
    "key-passwd",
    "key-remove",
    "ls",
    "mark",
    "pitr",
    "prune",
    "repair",
    "restore",
    "restore-table",
    "snapshots",
    "status",
    "unlock",
    "wal-fetch",
    "wal-push",
    "wal-status",
)
# What a scheduler runs: running_jobs shows 0 for these when none runs.
JOB_OPERATIONS = ("backup", "check", "copy", "drill", "forget", "prune")
# Whose last success and failure streak are watched: the jobs, and WAL archiving. A look
# (ls, snapshots) or an alert's own record has no success worth a series.
WATCHED_OPERATIONS = frozenset((*JOB_OPERATIONS, "wal-push"))
# The repository label of a repository named by path or URL rather than [repository.NAME]:
# a path is no label.
UNNAMED_REPOSITORY = "default"


@dataclass(frozen=True)
class RunCounts:
    """What the catalog holds: runs per (operation, status), and per operation its
    durations counted into DURATION_BUCKETS (cumulative), the number of runs and their
    sum in seconds."""

    runs: Mapping[tuple[str, str], int] = field(default_factory=dict)
    durations: Mapping[str, tuple[tuple[int, ...], int, float]] = field(default_factory=dict)


def registry(
    observations: Observations, counts: RunCounts | None, version: str
) -> CollectorRegistry:
    """A registry exposing one reading; `counts` None: the catalog could not be read (its
    counters are then absent rather than 0, which would read as a reset)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(MedvaultCollector(observations, counts, version))
    return found


def repository_label(facts: RepositoryFacts) -> str:
    return facts.name if facts.name != facts.url else UNNAMED_REPOSITORY


class MedvaultCollector(Collector):
    def __init__(self, observations: Observations, counts: RunCounts | None, version: str) -> None:
        self.observations = observations
        self.counts = counts
        self.version = version

    def collect(self) -> Iterable[Metric]:
        yield from self._runs()
        yield from self._jobs()
        yield from self._sources()
        yield from self._repositories()
        yield from self._running()
        info = InfoMetricFamily("medvault", "This medvault.", labels=())
        info.add_metric([], {"version": self.version})
        yield info
        yield _gauge(
            "medvault_observation_problems",
            "What the last reading could not gather (the catalog, a source).",
            [],
            [([], len(self.observations.problems))],
        )

    def _runs(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("medvault_catalog_up", "1 when the run catalog could be read.")
        up.add_metric([], 0 if self.counts is None else 1)
        yield up
        if self.counts is None:
            return
        total = CounterMetricFamily(
            "medvault_runs_total",
            "Runs recorded in the catalog, by operation and how they ended.",
            labels=["operation", "status"],
        )
        operations = sorted({*OPERATIONS, *(op for op, _ in self.counts.runs)})
        for operation in operations:
            statuses = sorted({*STATUSES, *(s for op, s in self.counts.runs if op == operation)})
            for status in statuses:
                total.add_metric([operation, status], self.counts.runs.get((operation, status), 0))
        yield total
        durations = HistogramMetricFamily(
            "medvault_run_duration_seconds",
            "How long recorded runs took, whatever their status.",
            labels=["operation"],
        )
        for operation, (at_most, runs, sum_s) in sorted(self.counts.durations.items()):
            buckets = [(_bound(b), n) for b, n in zip(DURATION_BUCKETS, at_most, strict=True)]
            durations.add_metric([operation], [*buckets, ("+Inf", runs)], sum_value=sum_s)
        yield durations

    def _jobs(self) -> Iterator[Metric]:
        jobs = [j for j in self.observations.jobs if j.operation in WATCHED_OPERATIONS]
        yield _gauge(
            "medvault_last_success_timestamp_seconds",
            "When the newest successful run of a source's operation ended (Unix time); "
            "source empty for repository-wide runs.",
            ["source", "operation"],
            [
                ([j.source or "", j.operation], j.last_success.timestamp())
                for j in jobs
                if j.last_success is not None
            ],
        )
        yield _gauge(
            "medvault_job_consecutive_failures",
            "Failed or incomplete runs of a source's operation since its last successful one.",
            ["source", "operation"],
            [([j.source or "", j.operation], j.consecutive_failures) for j in jobs],
        )
        yield _gauge(
            "medvault_job_last_duration_seconds",
            "How long the newest run of a source's operation took.",
            ["source", "operation"],
            [
                ([j.source or "", j.operation], j.last_duration_s)
                for j in jobs
                if j.last_duration_s is not None
            ],
        )

    def _sources(self) -> Iterator[Metric]:
        sources = self.observations.sources
        repositories = {r.name: repository_label(r) for r in self.observations.repositories}
        labelled = [
            _Labelled(s.source, s.kind, s.tier, repositories.get(s.repository, s.repository))
            for s in sources
        ]

        def each(name: str, doc: str, values: Iterable[tuple[str, float | None]]) -> Metric:
            return _gauge(name, doc, ["source"], [([s], v) for s, v in values if v is not None])

        yield _gauge(
            "medvault_source_info",
            "Each source watched: its kind, tier and repository (always 1).",
            ["source", "kind", "tier", "repository"],
            [([s.source, s.kind, s.tier or "", s.repository_label], 1) for s in labelled],
        )
        yield _gauge(
            "medvault_backup_bytes",
            "Bytes the newest snapshot of each kind holds (files, postgres.physical, …).",
            ["source", "kind"],
            [([s.source, kind], n) for s in sources for kind, n in s.backup_bytes_by_kind.items()],
        )
        yield each(
            "medvault_last_backup_bytes",
            "Bytes the newest successful backup read from the source (catalog).",
            [(s.source, s.last_backup_bytes) for s in sources],
        )
        yield each(
            "medvault_backup_bytes_average",
            "The mean bytes read by the up to seven successful backups before the newest.",
            [
                (s.source, sum(s.previous_backup_bytes) / len(s.previous_backup_bytes))
                for s in sources
                if s.previous_backup_bytes
            ],
        )
        yield each(
            "medvault_backup_min_bytes",
            "The source's min_size: a smaller backup is suspect.",
            [(s.source, s.min_size) for s in sources],
        )
        yield each(
            "medvault_newest_snapshot_timestamp_seconds",
            "When the source's newest snapshot ended (Unix time).",
            [(s.source, s.last_backup.timestamp() if s.last_backup else None) for s in sources],
        )
        yield each(
            "medvault_source_rpo_seconds",
            "The source's tier RPO.",
            [(s.source, s.rpo_s) for s in sources],
        )
        yield each(
            "medvault_source_rto_seconds",
            "The source's tier RTO.",
            [(s.source, s.rto_s) for s in sources],
        )
        yield each(
            "medvault_wal_archive_lag_seconds",
            "Age of the source's newest archived WAL segment.",
            [(s.source, s.wal_lag_s) for s in sources],
        )
        postgres = [s for s in sources if s.kind == "postgres"]
        yield each(
            "medvault_source_server_up",
            "1 when the source's PostgreSQL server answered (pg_stat_archiver).",
            [(s.source, 0 if s.server_error else 1) for s in postgres],
        )
        yield each(
            "medvault_wal_archiver_failing",
            "1 when the server's archiver failed after its last success.",
            [(s.source, 1 if s.archiver_failing else 0) for s in postgres if not s.server_error],
        )
        yield each(
            "medvault_drill_rto_seconds",
            "How long the source's last restore drill took to restore and validate.",
            [(s.source, s.last_drill_rto_s) for s in sources],
        )
        yield each(
            "medvault_last_drill_timestamp_seconds",
            "When the source's last restore drill started (Unix time).",
            [(s.source, s.last_drill.timestamp() if s.last_drill else None) for s in sources],
        )
        yield each(
            "medvault_last_drill_ok",
            "1 when the source's last restore drill passed.",
            [
                (s.source, None if s.last_drill_ok is None else int(s.last_drill_ok))
                for s in sources
            ],
        )

    def _repositories(self) -> Iterator[Metric]:
        repos = [(repository_label(r), r) for r in self.observations.repositories]
        taken = self.observations.taken

        def each(name: str, doc: str, values: Iterable[tuple[str, float | None]]) -> Metric:
            return _gauge(name, doc, ["repository"], [([r], v) for r, v in values if v is not None])

        yield each(
            "medvault_repository_up",
            "1 when the repository could be opened (reachable, and its key opens it).",
            [(label, 1 if r.opened else 0) for label, r in repos],
        )
        yield each(
            "medvault_repository_stored_bytes",
            "Bytes the repository's packs take in the store.",
            [(label, r.stored_bytes) for label, r in repos],
        )
        yield each(
            "medvault_storage_capacity_bytes",
            "The repository's quota, else the size of its file system.",
            [(label, r.capacity_bytes) for label, r in repos],
        )
        yield each(
            "medvault_storage_used_ratio",
            "How full the repository's storage is, 0 to 1 (stored/quota, or the file system's).",
            [(label, r.used_ratio) for label, r in repos],
        )
        yield each(
            "medvault_key_age_seconds",
            "Age of the repository's oldest usable key slot.",
            [
                (label, (taken - r.key_created).total_seconds() if r.key_created else None)
                for label, r in repos
            ],
        )
        yield each(
            "medvault_clock_skew_seconds",
            "The largest clock skew seen beyond tolerance (snapshots, locks); 0 when none.",
            [(label, r.clock_skew_s or 0.0) for label, r in repos if r.opened],
        )

    def _running(self) -> Iterator[Metric]:
        running = self.observations.running
        operations = sorted({*JOB_OPERATIONS, *(r.operation for r in running)})
        yield _gauge(
            "medvault_running_jobs",
            "Runs under way, by operation.",
            ["operation"],
            [([op], sum(1 for r in running if r.operation == op)) for op in operations],
        )
        taken = self.observations.taken
        longest: dict[str, float] = {}
        for job in running:
            age = (taken - job.started).total_seconds()
            longest[job.operation] = max(age, longest.get(job.operation, age))
        yield _gauge(
            "medvault_running_job_age_seconds",
            "How long the longest-running run of an operation has been under way.",
            ["operation"],
            [([op], age) for op, age in sorted(longest.items())],
        )


class _Labelled(NamedTuple):
    source: str
    kind: str
    tier: str | None
    repository_label: str


def _gauge(
    name: str, doc: str, labels: list[str], values: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, float(value))
    return family


def _bound(seconds: float) -> str:
    return f"{seconds:g}"
