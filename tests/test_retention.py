"""Retention policies (which snapshots forget keeps, and by which rule), tier floors, and
legal holds that no policy can override."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from conftest import Cli
from medvault.policy.retention import RetentionPolicy, apply

T0 = dt.datetime(2026, 3, 31, 23, 0, tzinfo=dt.UTC)


def hourly_history(hours: int) -> list[tuple[str, dt.datetime]]:
    return [(f"s{n:05d}", T0 - dt.timedelta(hours=n)) for n in range(hours)]


def kept(policy: RetentionPolicy, history: list[tuple[str, dt.datetime]]) -> dict[str, tuple]:
    return {d.snapshot_id: d.reasons for d in apply(policy, history) if d.keep}


def test_gfs_keeps_the_newest_snapshot_of_each_recent_period() -> None:
    history = hourly_history(24 * 100)  # hourly for 100 days
    result = kept(RetentionPolicy(last=3, daily=7, weekly=4, monthly=3), history)
    assert set(list(result)[:3]) == {"s00000", "s00001", "s00002"}
    assert "last" in result["s00000"] and "daily" in result["s00000"]
    days = [sid for sid, why in result.items() if "daily" in why]
    assert len(days) == 7
    # The newest snapshot of each day is the 23:00 one, 24 hours apart.
    assert days == [f"s{24 * n:05d}" for n in range(7)]
    assert len([w for w in result.values() if "weekly" in w]) == 4
    months = sorted(
        (when for sid, when in history if "monthly" in result.get(sid, ())), reverse=True
    )
    assert [(m.month, m.day, m.hour) for m in months] == [(3, 31, 23), (2, 28, 23), (1, 31, 23)]
    assert len(result) < len(history)


def test_keep_within_counts_from_the_newest_snapshot_and_an_empty_policy_keeps_all() -> None:
    history = hourly_history(48)
    result = kept(RetentionPolicy(within=dt.timedelta(hours=10)), history)
    assert set(result) == {f"s{n:05d}" for n in range(11)}
    assert len(kept(RetentionPolicy(), history)) == 48


def test_a_policy_must_reach_the_tier_floor(tmp_path: Path) -> None:
    def config(retention: str) -> Cli:
        path = tmp_path / "medvault.toml"
        path.write_text(
            f'[repository.main]\nurl = "{tmp_path / "repo"}"\n'
            '[tier.critical]\nfloor = "7y"\n'
            f"[tier.critical.retention]\n{retention}\n"
        )
        cli = Cli("main", tmp_path, tmp_path / "repo")
        cli.env["MEDVAULT_CONFIG"] = str(path)
        return cli

    done = config("keep_daily = 30\nkeep_monthly = 12")("init", check=False)
    assert done.returncode == 2
    assert "tier.critical.retention" in done.stderr and "floor of 7y" in done.stderr
    config("keep_daily = 30\nkeep_monthly = 12\nkeep_yearly = 7")("init")


def setup(tmp_path: Path, make_tree) -> Cli:
    data = make_tree({"chart.txt": b"v0\n"})
    path = tmp_path / "medvault.toml"
    path.write_text(
        f'[repository.main]\nurl = "{tmp_path / "repo"}"\n'
        f'[source.charts]\nkind = "files"\npaths = ["{data}"]\n'
        "[source.charts.retention]\nkeep_last = 2\n"
    )
    cli = Cli("main", tmp_path, tmp_path / "repo")
    cli.env["MEDVAULT_CONFIG"] = str(path)
    cli("init")
    for n in range(4):
        (data / "chart.txt").write_bytes(f"v{n}\n".encode())
        cli("backup", "charts")
    return cli


def snapshot_ids(cli: Cli) -> list[str]:
    return [s["id"] for s in json.loads(cli("snapshots", "--json").stdout)]


def test_forget_applies_the_policy_and_never_a_held_snapshot(tmp_path: Path, make_tree) -> None:
    cli = setup(tmp_path, make_tree)
    oldest, second, third, newest = snapshot_ids(cli)
    cli("hold", "add", oldest, "--reason", "litigation 2026-114 (Smith v. Clinic)")
    holds = json.loads(cli("hold", "list", "--json").stdout)
    assert [(h["snapshot"], h["reason"]) for h in holds] == [
        (oldest, "litigation 2026-114 (Smith v. Clinic)")
    ]

    plan = {e["id"]: e for e in json.loads(cli("forget", "--dry-run", "--json").stdout)}
    assert plan[newest]["action"] == "keep" and plan[newest]["rules"] == ["last"]
    assert plan[second]["action"] == "would remove"
    assert plan[oldest]["action"] == "kept" and "litigation 2026-114" in plan[oldest]["reason"]
    assert snapshot_ids(cli) == [oldest, second, third, newest], "a dry run removes nothing"

    text = cli("forget").stdout
    assert "removed" in text and "legal hold" in text
    assert snapshot_ids(cli) == [oldest, third, newest]
    done = cli("forget", oldest, check=False)
    assert done.returncode == 21, "a held snapshot is not forgotten even by id"

    done = cli("hold", "remove", oldest, "--reason", "", check=False)
    assert done.returncode == 2 and "reason" in done.stderr
    cli("hold", "remove", oldest, "--reason", "case closed 2026-11-30")
    assert json.loads(cli("hold", "list", "--json").stdout) == []
    assert list((tmp_path / "repo" / "holds" / "released").iterdir()), "the release is on record"
    cli("forget")
    assert snapshot_ids(cli) == [third, newest]


def copy_object(cli: Cli, name: str, to: str) -> None:
    """What anyone with write access to the store can do: put a record under another name."""
    with cli.backend() as backend:
        backend.store(to, backend.load(name))


def test_a_hold_record_copied_to_another_snapshots_name_holds_nothing(
    tmp_path: Path, make_tree
) -> None:
    cli = setup(tmp_path, make_tree)
    held, other, _, _ = snapshot_ids(cli)
    cli("hold", "add", held, "--reason", "litigation 2026-114")
    copy_object(cli, f"holds/{held}", f"holds/{other}")

    listed = cli("hold", "list", "--json")
    assert [h["snapshot"] for h in json.loads(listed.stdout)] == [held]
    assert f"hold record holds/{other} is a copy of holds/{held} and holds nothing" in (
        listed.stderr
    )
    checked = cli("check", check=False)
    assert checked.returncode == 13
    assert f"record holds/{other} does not open under its name" in checked.stdout

    # Nor does the copy outlive the hold it was taken from.
    cli("hold", "remove", held, "--reason", "case closed")
    assert json.loads(cli("hold", "list", "--json").stdout) == []
    assert "removed" in cli("forget", held, other).stdout
    assert held not in snapshot_ids(cli) and other not in snapshot_ids(cli)


def test_a_damaged_hold_record_keeps_its_snapshot_held_and_is_reported(
    tmp_path: Path, make_tree
) -> None:
    cli = setup(tmp_path, make_tree)
    held = snapshot_ids(cli)[0]
    cli("hold", "add", held, "--reason", "litigation 2026-114")
    cli.damage(f"holds/{held}", lambda data: data[:-1] + bytes([data[-1] ^ 1]))
    listed = cli("hold", "list", "--json")
    assert [h["snapshot"] for h in json.loads(listed.stdout)] == [held]
    assert f"hold on {held[:12]} is unreadable" in listed.stderr
    assert cli("forget", held, check=False).returncode == 21


def test_hold_changes_run_one_at_a_time_beside_backups(initialized_cli: Cli, make_tree) -> None:
    """A release lifts store-side legal holds from objects no other hold needs: it can only
    know which while no other hold is placed or released."""
    from medvault.backends import open_backend
    from medvault.repository.locks import RepositoryLock

    cli = initialized_cli
    data = make_tree({"consent.pdf": b"signed\n"})
    snap = json.loads(cli("backup", str(data), "--json").stdout)["snapshot"]
    other = RepositoryLock(
        open_backend(str(cli.repo)), exclusive=False, scope="holds", purpose="hold remove"
    )
    other.acquire()
    try:
        refused = cli("hold", "add", snap, "--reason", "litigation 2026-7", check=False)
        assert refused.returncode == 12
        assert "shared holds lock" in refused.stderr and "for hold remove" in refused.stderr
        cli("backup", str(data))  # backups go on
    finally:
        other.release()
    cli("hold", "add", snap, "--reason", "litigation 2026-7")
