"""A host whose clock runs years ahead writes snapshots dated in the future: they are listed,
restorable by id, and reported, but never taken as "latest" or as an incremental parent."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Cli, skewed_clock, tree_digest

FIVE_YEARS_AHEAD = "+1826d"


def test_a_snapshot_dated_years_ahead_is_never_latest_and_status_names_the_skew(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    cli = initialized_cli
    data = make_tree({"letters/discharge.txt": b"Discharged home.\n" * 100})
    stale = json.loads(
        cli("backup", str(data), "--json", env=skewed_clock(FIVE_YEARS_AHEAD)).stdout
    )["snapshot"]
    (data / "letters" / "referral.txt").write_bytes(b"Referred to cardiology.\n")
    fresh_run = json.loads(cli("backup", str(data), "--json").stdout)
    fresh = fresh_run["snapshot"]
    # Not an incremental child of the future-dated one.
    assert fresh_run["files_new"] == 2, fresh_run

    done = cli("restore", "latest", "--target", str(tmp_path / "out"))
    assert f"snapshot {stale[:12]}" in done.stderr and "ahead of this host's clock" in done.stderr
    assert tree_digest(tmp_path / "out" / str(data).lstrip("/")) == tree_digest(data)

    listed = [s["id"] for s in json.loads(cli("snapshots", "--json").stdout)]
    assert {stale, fresh} <= set(listed)
    cli("restore", stale, "--target", str(tmp_path / "old"))

    report = json.loads(cli("status", "--json", check=False).stdout)
    (row,) = report["sources"]
    assert row["state"] != "OK"
    assert any("clock skew" in p and stale[:12] in p for p in row["problems"])
    assert row["last_backup_age_s"] >= 0
