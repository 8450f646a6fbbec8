"""`medvault metrics`: what the catalog, the repositories and the sources' servers hold, in
Prometheus' text format, parsed back with prometheus-client's own parser."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from conftest import Cli
from pgcluster import PgWorld
from s3server import S3Server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def clinic(tmp_path: Path, data: Path, repository: Path | str | None = None) -> Cli:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.primary]\nurl = "{repository or tmp_path / "primary"}"\n\n'
        '[tier.critical]\nrpo = "15m"\nrto = "1h"\n\n'
        f'[source.uploads]\nkind = "files"\npaths = ["{data}"]\ntier = "critical"\n'
        'repository = "primary"\n\n'
        f'[source.scans]\nkind = "files"\npaths = ["{tmp_path / "scans"}"]\n'
        'repository = "primary"\n'
    )
    cli = Cli("primary", tmp_path, tmp_path / "primary")
    cli.env["MEDVAULT_CONFIG"] = str(config)
    return cli


def test_metrics_show_the_numbers_the_catalog_holds(tmp_path: Path, make_tree) -> None:
    data = make_tree({"a.txt": b"clinic letter\n" * 100})
    cli = clinic(tmp_path, data)
    cli("init")
    cli("backup", "uploads")
    (data / "b.txt").write_bytes(b"referral\n" * 50)
    cli("backup", "uploads")
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "x.dcm").write_bytes(b"image" * 10)
    cli("backup", "scans")
    scans.rename(tmp_path / "scans-moved")  # the source's path disappears: its backups fail
    for _ in range(2):
        assert cli("backup", "scans", check=False).returncode == 15

    samples = parse(cli("metrics").stdout)
    runs = json.loads(cli("runs", "--json", "--limit", "100").stdout)
    backups = [r for r in runs if r["operation"] == "backup"]
    for status in ("ok", "failed"):
        held = sum(1 for r in backups if r["status"] == status)
        assert value(samples, "medvault_runs_total", operation="backup", status=status) == held
    assert value(samples, "medvault_runs_total", operation="backup", status="ok") == 3
    assert value(samples, "medvault_runs_total", operation="backup", status="failed") == 2
    # Every known operation and status is there from the start, so increase() sees a first run.
    assert value(samples, "medvault_runs_total", operation="drill", status="failed") == 0

    newest_ok = max(
        (r for r in backups if r["source"] == "uploads" and r["status"] == "ok"),
        key=lambda r: r["started"],
    )
    # Gathering is not a run: the history does not fill with readings.
    cli("metrics")
    assert len(json.loads(cli("runs", "--json", "--limit", "100").stdout)) == len(runs)

    ended = dt.datetime.fromisoformat(newest_ok["ended"]).timestamp()
    stamp = value(
        samples, "medvault_last_success_timestamp_seconds", source="uploads", operation="backup"
    )
    assert abs(stamp - ended) < 0.001
    assert (
        value(samples, "medvault_job_consecutive_failures", source="scans", operation="backup") == 2
    )
    assert (
        value(samples, "medvault_job_consecutive_failures", source="uploads", operation="backup")
        == 0
    )

    snapshots = json.loads(cli("snapshots", "--json").stdout)
    newest = max((s for s in snapshots if s["source"] == "uploads"), key=lambda s: s["time"])
    total = newest["stats"]["total_bytes"]
    assert value(samples, "medvault_backup_bytes", source="uploads", kind="files") == total
    assert value(samples, "medvault_last_backup_bytes", source="uploads") == newest_ok["bytes_read"]
    count = value(samples, "medvault_run_duration_seconds_count", operation="backup")
    assert count == len(backups)
    assert (
        value(samples, "medvault_run_duration_seconds_bucket", operation="backup", le="+Inf")
        == count
    )
    assert value(samples, "medvault_source_rpo_seconds", source="uploads") == 900
    assert value(samples, "medvault_repository_up", repository="primary") == 1
    assert value(samples, "medvault_repository_stored_bytes", repository="primary") > 0
    assert 0 < value(samples, "medvault_storage_used_ratio", repository="primary") <= 1
    assert value(samples, "medvault_key_age_seconds", repository="primary") >= 0
    assert value(samples, "medvault_catalog_up") == 1


def test_textfile_is_replaced_atomically_for_the_collector(tmp_path: Path, make_tree) -> None:
    data = make_tree({"a.txt": b"clinic letter\n"})
    cli = clinic(tmp_path, data)
    cli("init")
    cli("backup", "uploads")
    collector = tmp_path / "textfile"
    collector.mkdir()
    (collector / "medvault.prom").write_text("stale\n")
    cli("metrics", "--textfile", str(collector))
    assert sorted(os.listdir(collector)) == ["medvault.prom"]  # no temporary file left
    written = collector / "medvault.prom"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    samples = parse(written.read_text())
    assert value(samples, "medvault_runs_total", operation="backup", status="ok") == 1

    missing = cli("metrics", "--textfile", str(tmp_path / "nowhere"), check=False)
    assert missing.returncode == 2 and "not a directory" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_an_unreachable_repository_is_down_not_an_error(tmp_path: Path, make_tree) -> None:
    data = make_tree({"a.txt": b"clinic letter\n"})
    cli = clinic(tmp_path, data, repository=tmp_path / "no-such-repository")
    done = cli("metrics")
    assert "Traceback" not in done.stderr
    samples = parse(done.stdout)
    assert value(samples, "medvault_repository_up", repository="primary") == 0
    assert (
        "medvault_repository_stored_bytes",
        frozenset({("repository", "primary")}),
    ) not in samples


def test_a_wrong_key_is_down_too(tmp_path: Path, make_tree) -> None:
    data = make_tree({"a.txt": b"clinic letter\n"})
    cli = clinic(tmp_path, data)
    cli("init")
    done = cli("metrics", env={"MEDVAULT_PASSWORD": "not the passphrase"})
    assert value(parse(done.stdout), "medvault_repository_up", repository="primary") == 0


def test_postgres_source_reports_wal_lag_and_its_archiver(pg_world: PgWorld) -> None:
    cluster = pg_world.start_archiving_cluster()
    cluster.wait_archived(cluster.switch_wal())
    cluster.execute("CREATE TABLE t AS SELECT 1 AS x")
    cluster.wait_archived(cluster.switch_wal())
    samples = parse(pg_world.cli("metrics").stdout)
    lag = value(samples, "medvault_wal_archive_lag_seconds", source="emr")
    assert 0 <= lag < 600
    assert value(samples, "medvault_source_server_up", source="emr") == 1
    assert value(samples, "medvault_wal_archiver_failing", source="emr") == 0

    cluster.stop()
    samples = parse(pg_world.cli("metrics").stdout)
    assert value(samples, "medvault_source_server_up", source="emr") == 0
    assert ("medvault_wal_archiver_failing", frozenset({("source", "emr")})) not in samples


def test_a_quota_is_the_capacity_storage_is_judged_against(tmp_path: Path, make_tree) -> None:
    data = make_tree({"a.txt": b"clinic letter\n"})
    cli = clinic(tmp_path, data)
    config = Path(cli.env["MEDVAULT_CONFIG"])
    config.write_text(
        config.read_text().replace("[tier.critical]", 'quota = "1MB"\n\n[tier.critical]')
    )
    cli("init")
    cli("backup", "uploads")
    samples = parse(cli("metrics").stdout)
    stored = value(samples, "medvault_repository_stored_bytes", repository="primary")
    assert value(samples, "medvault_storage_capacity_bytes", repository="primary") == 1_000_000
    assert value(samples, "medvault_storage_used_ratio", repository="primary") == stored / 1_000_000

    config.write_text(config.read_text().replace('"1MB"', '"lots"'))
    refused = cli("metrics", check=False)
    assert refused.returncode == 2 and "repository.primary.quota" in refused.stderr


def test_an_s3_repository_is_judged_against_its_quota(
    s3_server: S3Server, tmp_path: Path, make_tree
) -> None:
    """An object store has no file system to ask: `quota` is its capacity."""
    data = make_tree({"a.txt": b"clinic letter\n" * 1000})
    cli = clinic(tmp_path, data, repository=f"s3://{s3_server.new_bucket()}/repo")
    config = Path(cli.env["MEDVAULT_CONFIG"])
    config.write_text(
        config.read_text().replace("[tier.critical]", 'quota = "2MB"\n\n[tier.critical]')
    )
    cli("init")
    cli("backup", "uploads")
    samples = parse(cli("metrics").stdout)
    assert value(samples, "medvault_repository_up", repository="primary") == 1
    stored = value(samples, "medvault_repository_stored_bytes", repository="primary")
    assert stored > 0
    assert value(samples, "medvault_storage_capacity_bytes", repository="primary") == 2_000_000
    assert value(samples, "medvault_storage_used_ratio", repository="primary") == stored / 2_000_000
