"""`medvault status`: backups against the tier's RPO, and how far the secondary lags."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Cli


def setup(tmp_path: Path, data: Path, offsite: Path) -> Cli:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.primary]\nurl = "{tmp_path / "primary"}"\nsecondary = "offsite"\n\n'
        f'[repository.offsite]\nurl = "{offsite}"\n\n'
        '[tier.critical]\nrpo = "15m"\nrto = "1h"\nfloor = "7y"\n\n'
        f'[source.uploads]\nkind = "files"\npaths = ["{data}"]\ntier = "critical"\n'
        'repository = "primary"\n'
    )
    cli = Cli("primary", tmp_path, tmp_path / "primary")
    cli.env["MEDVAULT_CONFIG"] = str(config)
    return cli


EXIT_CODES = {"OK": 0, "WARN": 1, "CRITICAL": 2}


def status(cli: Cli) -> dict[str, object]:
    """`status --json`, whose exit code is its worst state's (0 OK, 1 WARN, 2 CRITICAL)."""
    done = cli("status", "--json", check=False)
    report: dict[str, object] = json.loads(done.stdout)
    assert done.returncode == EXIT_CODES[str(report["state"])], done.stderr
    return report


def test_status_shows_rpo_state_and_the_secondary_catching_up(tmp_path: Path, make_tree) -> None:
    data = make_tree({"a.txt": b"clinic letter\n" * 100})
    cli = setup(tmp_path, data, tmp_path / "offsite")
    cli("init")
    cli("--repo", "offsite", "init", "--copy-keys-from", "primary")
    report = status(cli)
    (row,) = report["sources"]  # type: ignore[misc]
    assert row["snapshots"] == 0 and row["state"] == "CRITICAL", "never backed up"
    assert report["state"] == "CRITICAL"

    cli("backup", "uploads")
    report = status(cli)
    (row,) = report["sources"]  # type: ignore[misc]
    assert (row["source"], row["tier"], row["rpo"], row["state"]) == (
        "uploads",
        "critical",
        "15m",
        "OK",
    )
    lag = report["secondary"]
    assert lag["state"] == "WARN" and lag["snapshots_missing"] == 1  # type: ignore[index]
    assert report["state"] == "WARN", "the secondary is behind"
    assert cli("status", check=False).returncode == 1, "the table exits as --json does"

    cli("copy", "--from", "primary", "--to", "offsite")
    report = status(cli)
    lag = report["secondary"]
    assert lag["state"] == "OK" and lag["snapshots_missing"] == 0  # type: ignore[index]
    assert report["state"] == "OK"
    text = cli("status").stdout  # exits 0: all is OK
    assert "uploads" in text and "OK" in text and "0 snapshot(s) behind" in text

    cli("drill", "uploads")
    report = status(cli)
    (row,) = report["sources"]  # type: ignore[misc]
    assert row["last_drill_ok"] is True and row["drill_within_rto"] is True
    assert report["stored_bytes"] > 0 and report["dedup_ratio"] > 0  # type: ignore[operator]
    assert "ok" in cli("status").stdout.splitlines()[2]


def test_an_unreachable_secondary_is_critical(tmp_path: Path, make_tree) -> None:
    data = make_tree({"a.txt": b"clinic letter\n" * 100})
    cli = setup(tmp_path, data, tmp_path / "no-such-offsite")
    cli("init")
    cli("backup", "uploads")
    report = status(cli)
    lag = report["secondary"]
    assert lag["state"] == "CRITICAL" and "no medvault repository" in lag["error"]  # type: ignore[index]
    assert report["state"] == "CRITICAL"
