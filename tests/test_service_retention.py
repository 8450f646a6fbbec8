"""forget, legal holds, drills and the snapshot queries as service calls: each returns what
the shell renders and leaves one run record, however it ends."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import PASSWORD, Cli
from medvault.errors import SnapshotNotFound, UsageError
from medvault.service.drill import DrillOptions, DrillRun, drill, drills
from medvault.service.forget import ForgetOptions, forget
from medvault.service.holds import hold_add, hold_list, hold_remove
from medvault.service.runs import RunRecord
from medvault.service.session import Session
from medvault.service.snapshots import LsOptions, diff, ls, snapshots
from test_service_runs import NIGHT_SHIFT, Given, Kept


def _config(path: Path, repo: Path, data: Path) -> Path:
    path.write_text(
        f'[repository.main]\nurl = "{repo}"\n'
        '[tier.records]\nrto = "1h"\n'
        f'[source.charts]\nkind = "files"\npaths = ["{data}"]\ntier = "records"\n'
        "[source.charts.retention]\nkeep_last = 2\n"
    )
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four snapshots of source `charts` (keep_last = 2), made once: each test gets a copy."""
    base = tmp_path_factory.mktemp("template")
    data = base / "data"
    (data / "scans").mkdir(parents=True)
    (data / "scans" / "a.dcm").write_bytes(b"scan a\n")
    cli = Cli("main", base, base / "repo")
    cli.env["MEDVAULT_CONFIG"] = str(_config(base / "medvault.toml", base / "repo", data))
    cli("init")
    for n in range(4):
        (data / "chart.txt").write_bytes(f"v{n}\n".encode())
        cli("backup", "charts")
    return base


class World:
    """A configured repository of its own holding the template's four snapshots, and a
    session on it whose runs are kept."""

    def __init__(self, tmp_path: Path, template: Path) -> None:
        shutil.copytree(template / "repo", tmp_path / "repo")
        self.data = template / "data"
        self.config = _config(tmp_path / "medvault.toml", tmp_path / "repo", self.data)
        self.cli = Cli("main", tmp_path, tmp_path / "repo")
        self.cli.env["MEDVAULT_CONFIG"] = str(self.config)
        self.kept = Kept()
        self.session = self.new_session()
        self.ids = [s.id for s in snapshots(self.session).snapshots]
        self.kept.records.clear()

    def new_session(self) -> Session:
        return Session(
            credentials=Given(PASSWORD),
            caller=NIGHT_SHIFT,
            repository="main",
            config=str(self.config),
            observers=[self.kept],
        )

    @property
    def record(self) -> RunRecord:
        """The one run since the last look."""
        (record,) = self.kept.records
        self.kept.records.clear()
        return record


@pytest.fixture
def world(tmp_path: Path, template: Path) -> World:
    return World(tmp_path, template)


# -- forget and holds --------------------------------------------------------------------------


def test_forget_by_policy_removes_what_it_no_longer_keeps_but_never_a_held_snapshot(
    world: World,
) -> None:
    oldest, second, third, newest = world.ids
    placed = hold_add(world.session, snapshot=oldest[:10], reason="  litigation 2026-114 ")
    assert placed.snapshot.id == oldest and placed.hold.reason == "litigation 2026-114"
    # The hold names the shell's caller (an API user later), not the service's OS account.
    assert (placed.hold.user, placed.hold.host) == (NIGHT_SHIFT.user, NIGHT_SHIFT.host)
    record = world.record
    assert (record.operation, record.status, record.source) == ("hold-add", "ok", "charts")
    assert record.snapshots == (oldest,) and record.details == {"reason": "litigation 2026-114"}

    plan = forget(world.session, ForgetOptions(dry_run=True))
    actions = {o.id: (o.action, o.rules) for o in plan.outcomes}
    assert actions[newest] == ("keep", ("last",))
    assert actions[second][0] == "would remove" and actions[oldest][0] == "kept"
    assert plan.incomplete is None
    record = world.record
    assert (record.operation, record.status, record.snapshots) == ("forget", "ok", ())
    assert record.details == {
        "dry_run": True,
        "by_policy": True,
        "removed": 0,
        "would_remove": 1,
        "kept": 3,
        "held_or_locked": 1,
    }
    assert record.repository == str(world.cli.repo)

    done = forget(world.session, ForgetOptions())
    (held,) = done.kept
    assert held.id == oldest and held.reason == "legal hold: litigation 2026-114"
    assert done.incomplete is None, "kept by policy run: nothing named was refused"
    record = world.record
    assert (record.status, record.snapshots) == ("ok", (second,))
    assert (record.details["removed"], record.details["kept"]) == (1, 3)
    assert [s.id for s in snapshots(world.session).snapshots] == [oldest, third, newest]


def test_forget_of_a_held_snapshot_by_id_keeps_it_and_the_run_is_incomplete(
    world: World,
) -> None:
    oldest, second = world.ids[:2]
    hold_add(world.session, snapshot=oldest, reason="litigation 2026-114")
    world.kept.records.clear()

    done = forget(world.session, ForgetOptions((oldest, second)))
    assert [(o.id, o.action, o.rules) for o in done.outcomes] == [
        (oldest, "kept", ("named",)),
        (second, "removed", ("named",)),
    ]
    assert done.incomplete == "1 snapshot(s) kept: on legal hold or locked"
    record = world.record
    assert (record.operation, record.status) == ("forget", "incomplete")
    assert record.error == done.incomplete
    assert record.snapshots == (second,), "the removed one, not the kept one"
    assert record.details["removed"] == 1 and record.details["held_or_locked"] == 1
    assert record.details["by_policy"] is False


def test_forget_by_policy_without_a_configuration_is_refused(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDVAULT_CONFIG", raising=False)
    monkeypatch.chdir(world.cli.repo)  # no medvault.toml here
    bare = Session(
        credentials=Given(PASSWORD),
        caller=NIGHT_SHIFT,
        repository=str(world.cli.repo),
        observers=[world.kept],
    )
    with pytest.raises(UsageError, match="no retention policies"):
        forget(bare, ForgetOptions())
    record = world.record
    assert (record.operation, record.status) == ("forget", "refused")
    assert record.error is not None and record.error.startswith("no retention policies")
    assert len(snapshots(bare).snapshots) == 4


def test_hold_list_and_remove_are_recorded_with_their_reasons(world: World) -> None:
    newest = world.ids[-1]
    hold_add(world.session, snapshot="latest:charts", reason="subject access request 77")
    world.kept.records.clear()

    (hold,) = hold_list(world.session).holds
    assert (hold.snapshot, hold.reason) == (newest, "subject access request 77")
    record = world.record
    assert (record.operation, record.status, record.details) == ("hold-list", "ok", {"holds": 1})

    released = hold_remove(world.session, snapshot=newest[:8], reason="request answered")
    assert released.snapshot.id == newest
    assert released.hold.release_reason == "request answered" and released.hold.released
    assert released.hold.released_by == f"{NIGHT_SHIFT.user}@{NIGHT_SHIFT.host}"
    record = world.record
    assert (record.operation, record.status, record.snapshots) == ("hold-remove", "ok", (newest,))
    assert record.details == {
        "reason": "request answered",
        "held_for": "subject access request 77",
    }
    assert hold_list(world.session).holds == ()


def test_a_hold_without_a_reason_is_refused_and_its_record_says_so(world: World) -> None:
    with pytest.raises(UsageError, match="needs a reason"):
        hold_add(world.session, snapshot=world.ids[0], reason="  ")
    record = world.record
    assert (record.operation, record.status) == ("hold-add", "refused")
    with pytest.raises(UsageError, match="is not on hold"):
        hold_remove(world.session, snapshot=world.ids[0], reason="no case")
    assert world.record.status == "refused"


# -- snapshots, ls, diff -----------------------------------------------------------------------


def test_snapshots_of_one_source_are_listed_oldest_first_and_counted(world: World) -> None:
    listed = snapshots(world.session, source="charts").snapshots
    assert [s.id for s in listed] == world.ids
    assert listed == tuple(sorted(listed, key=lambda s: s.taken))
    record = world.record
    assert (record.operation, record.source, record.status) == ("snapshots", "charts", "ok")
    assert record.details == {"snapshots": 4} and record.snapshots == ()
    assert snapshots(world.session, source="radiology").snapshots == ()


def test_ls_lists_a_snapshots_files_and_names_the_snapshot_it_read(world: World) -> None:
    newest, home = world.ids[-1], str(world.data)
    listing = ls(world.session, LsOptions("latest:charts", home))
    assert [e.path for e in listing.entries] == [
        home,
        f"{home}/chart.txt",
        f"{home}/scans",
        f"{home}/scans/a.dcm",
    ]
    assert listing.count == 4 and listing.snapshot.id == newest
    assert listing.entries[1].node.size == len(b"v3\n")
    record = world.record
    assert (record.operation, record.source, record.snapshots) == ("ls", "charts", (newest,))
    assert record.details == {"path": home, "recursive": True, "entries": 4}

    seen: list[str] = []
    streamed = ls(
        world.session, LsOptions(newest, f"{home}/scans"), on_entry=lambda e: seen.append(e.path)
    )
    assert seen == [f"{home}/scans", f"{home}/scans/a.dcm"]
    assert streamed.entries == () and streamed.count == 2
    world.kept.records.clear()

    with pytest.raises(SnapshotNotFound, match="not in snapshot"):
        ls(world.session, LsOptions(newest, "/missing"))
    assert world.record.status == "failed"


def test_diff_returns_the_changes_and_their_counts(world: World) -> None:
    oldest, newest = world.ids[0], world.ids[-1]
    changed = diff(world.session, first=oldest, second=newest)
    # Beside the chart, only directory times (of /tmp and the like) change.
    content = [(c.kind, c.path) for c in changed.changes if c.kind != "U"]
    assert content == [("M", f"{world.data}/chart.txt")]
    assert (changed.old.id, changed.new.id) == (oldest, newest)
    assert (changed.count("M"), changed.count("+")) == (1, 0)
    record = world.record
    assert (record.operation, record.status, record.source) == ("diff", "ok", "charts")
    assert record.snapshots == (oldest, newest)
    assert record.details == {"changes": {"+": 0, "-": 0, "M": 1, "U": changed.count("U"), "T": 0}}


# -- drills ------------------------------------------------------------------------------------


def test_a_files_drill_passes_is_stored_and_recorded(world: World, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = drill(world.session, DrillOptions("charts", scratch=str(scratch)))
    assert isinstance(done, DrillRun) and done.result.ok and done.rto == "1h"
    assert done.snapshot.id == world.ids[-1] and done.result.within_rto is True
    assert not list(scratch.iterdir()), "the restored copy is gone"
    record = world.record
    assert (record.operation, record.source, record.status) == ("drill", "charts", "ok")
    assert record.snapshots == (world.ids[-1],)
    assert record.details["passed"] is True and record.details["kind"] == "files"
    assert record.details["drill"] == done.result.id and record.details["failed_checks"] == []
    assert record.details["rto_target_s"] == 3600 and record.details["within_rto"] is True

    (stored,) = drills(world.session).results
    assert (stored.id, stored.ok) == (done.result.id, True)
    record = world.record
    assert (record.operation, record.status, record.details) == ("drills", "ok", {"drills": 1})


def test_a_drill_that_finds_damage_is_stored_and_its_run_failed(world: World) -> None:
    first = world.ids[0]
    for pack in (world.cli.repo / "data").rglob("*"):
        if pack.is_file():
            raw = bytearray(pack.read_bytes())
            raw[len(raw) // 2] ^= 1
            pack.chmod(0o600)
            pack.write_bytes(bytes(raw))
    shown = drill(world.session, DrillOptions("charts", snapshot=first))
    assert not shown.result.ok and shown.result.error
    assert shown.failure is not None and shown.failure.startswith(f"drill of snapshot {first[:12]}")
    record = world.record
    assert (record.operation, record.status, record.snapshots) == ("drill", "failed", (first,))
    assert record.error is not None and record.error.startswith(f"drill of snapshot {first[:12]}")
    assert record.details["passed"] is False
    (stored,) = drills(world.session).results
    assert stored.ok is False and stored.id == shown.result.id


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (DrillOptions("charts", kind="backup"), "--kind is physical, logical, files or csv"),
        (DrillOptions("charts", snapshot="latest", kind="files"), "not both"),
        (DrillOptions("charts", to_latest=True, kind="files"), "physical backups only"),
    ],
)
def test_a_drill_with_options_that_contradict_is_refused_before_opening(
    options: DrillOptions, message: str, tmp_path: Path
) -> None:
    kept = Kept()
    nowhere = Session(
        credentials=Given(PASSWORD),
        caller=NIGHT_SHIFT,
        repository=str(tmp_path / "no-repo"),
        observers=[kept],
    )
    with pytest.raises(UsageError, match=message):
        drill(nowhere, options)
    (record,) = kept.records
    assert (record.operation, record.source, record.status) == ("drill", "charts", "refused")
    assert not os.path.exists(tmp_path / "no-repo")


def test_the_newest_snapshot_of_a_kind_is_drilled_and_a_missing_kind_is_named(
    world: World,
) -> None:
    done = drill(world.session, DrillOptions("charts", kind="files"))
    assert done.snapshot.id == world.ids[-1]
    world.kept.records.clear()
    with pytest.raises(SnapshotNotFound, match="no logical snapshot of charts"):
        drill(world.session, DrillOptions("charts", kind="logical"))
    assert world.record.status == "failed"
