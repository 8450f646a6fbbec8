"""Restore modes: `backup --dry-run` writes nothing and predicts the backup that follows,
`check SNAP` checks one snapshot and no other, and the selectors `verified[:SOURCE]` and
`random:SPAN[:SOURCE]` pick snapshots from real drills and record what the pick rests on."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import PASSWORD, Cli
from medvault.config import RepositorySettings
from medvault.repository.keys import Credential
from medvault.service.runs import Caller, RunRecord
from medvault.service.session import Session

MiB = 1024 * 1024


class Given:
    def primary(self, settings: RepositorySettings | None) -> Credential:
        return Credential(passphrase=PASSWORD.encode())

    def other(self, settings: RepositorySettings | None) -> Credential:
        return Credential(passphrase=PASSWORD.encode())


class Kept:
    def __init__(self) -> None:
        self.records: list[RunRecord] = []

    def run_ended(self, record: RunRecord) -> None:
        self.records.append(record)


def files_cli(tmp_path: Path, *paths: Path) -> Cli:
    config = tmp_path / "medvault.toml"
    listed = ", ".join(f'"{p}"' for p in paths)
    config.write_text(
        f'[repository.main]\nurl = "{tmp_path / "repo"}"\n'
        f'[source.letters]\nkind = "files"\npaths = [{listed}]\n'
        f'[source.scans]\nkind = "files"\npaths = ["{tmp_path / "scans"}"]\n'
    )
    cli = Cli("main", tmp_path, tmp_path / "repo")
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli("init")
    return cli


def session(tmp_path: Path, kept: Kept) -> Session:
    return Session(
        credentials=Given(),
        caller=Caller.this_process("cli"),
        config=str(tmp_path / "medvault.toml"),
        observers=[kept],
        state_dir=tmp_path / "medvault-state",
    )


def listing(root: Path) -> list[tuple[str, int]]:
    """Every object of a local repository, with its size."""
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


def snapshot_ids(cli: Cli) -> list[str]:
    return [s["id"] for s in json.loads(cli("snapshots", "--json").stdout)]


def new_packs(cli: Cli, before: set[str]) -> list[str]:
    """Packs added since `before`, largest first."""
    with cli.backend() as backend:
        found = [o for o in backend.list("data") if o.name not in before]
    return [o.name for o in sorted(found, key=lambda o: -o.size)]


def pack_names(cli: Cli) -> set[str]:
    with cli.backend() as backend:
        return {o.name for o in backend.list("data")}


def flip(data: bytes) -> bytes:
    raw = bytearray(data)
    raw[len(raw) // 2] ^= 1
    return bytes(raw)


# -- backup --dry-run --------------------------------------------------------------------------


def test_dry_run_writes_nothing_and_predicts_the_backup_after_it(tmp_path: Path, make_tree) -> None:
    shared = os.urandom(MiB)
    data = make_tree({"a/scan.dcm": shared, "b/letter.txt": b"Dear colleague\n" * 4000})
    cli = files_cli(tmp_path, data)
    cli("backup", "letters")
    (data / "c").mkdir()
    (data / "c" / "copy.dcm").write_bytes(shared)  # nothing new: deduplicated
    (data / "c" / "new.dcm").write_bytes(os.urandom(MiB // 2))
    (data / "b" / "letter.txt").write_bytes(b"Dear colleague, again\n" * 4000)
    before = listing(cli.repo)
    done = cli("backup", "letters", "--dry-run", "--json")
    assert listing(cli.repo) == before, "the repository is as it was, lock and all"
    dry = json.loads(done.stdout)
    assert dry["backup_type"] == "incremental" and dry["parent"] == snapshot_ids(cli)[0]
    # A file written just before its parent may be re-read (the racy window): either count.
    assert dry["files_new"] == 2 and dry["files_changed"] + dry["files_unchanged"] == 2
    assert dry["bytes_read"] >= MiB + MiB // 2 + len(b"Dear colleague, again\n" * 4000)
    assert MiB // 2 < dry["bytes_new"] < MiB  # the copy was not new
    real = json.loads(cli("backup", "letters", "--json").stdout)
    for key in ("files_new", "files_changed", "files_unchanged", "dirs", "bytes_read"):
        assert dry[key] == real[key], key
    assert dry["bytes_added"] == real["bytes_added"], "new blobs, compressed and sealed"
    text = cli("backup", str(data), "--dry-run").stdout
    assert "nothing was written" in text and "would read" in text


def test_dry_run_refuses_a_physical_backup_without_a_data_directory_in_one_line(
    tmp_path: Path, make_tree
) -> None:
    cli = files_cli(tmp_path, make_tree({"a.txt": b"a"}))
    config = Path(cli.env["MEDVAULT_CONFIG"])
    config.write_text(
        config.read_text() + '[source.emr]\nkind = "postgres"\ndsn = "host=/nowhere dbname=emr"\n'
    )
    done = cli("backup", "emr", "--dry-run", check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "medvault: error: --dry-run of a physical backup walks the data directory: set "
        "source.emr.pgdata and use --method local (a streamed copy cannot be read without "
        "starting a base backup on the server)"
    ]


# -- check SNAP ----------------------------------------------------------------------------------


def test_check_of_one_snapshot_sees_its_own_damage_and_no_other(tmp_path: Path, make_tree) -> None:
    letters = make_tree({"letter.txt": os.urandom(2 * MiB)}, tmp_path / "letters")
    scans = make_tree({"mri.dcm": os.urandom(2 * MiB)}, tmp_path / "scans")
    cli = files_cli(tmp_path, letters)
    cli("backup", "letters")
    before = pack_names(cli)
    cli("backup", "scans")
    scans_pack = new_packs(cli, before)[0]
    letters_id, scans_id = snapshot_ids(cli)
    cli.damage(scans_pack, flip)

    done = cli("check", letters_id, "--read-data", "--json", check=False)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"] and report["snapshot"] == letters_id
    assert report["snapshots"] == 1 and report["packs_read"] >= 1

    done = cli("check", "latest:scans", "--read-data", "--json", check=False)
    report = json.loads(done.stdout)
    assert done.returncode == 13 and report["snapshot"] == scans_id
    assert report["affected"] == {scans_id: [f"{scans}/mri.dcm"]}
    assert cli("check", "latest:scans", check=False).returncode == 0, "structure is intact"
    text = cli("check", letters_id[:8]).stdout
    assert f"checked snapshot {letters_id[:12]}" in text
    assert cli("check", "--read-data", check=False).returncode == 13, "the whole repository"


def test_check_of_a_snapshot_refuses_a_subset_and_names_a_missing_one(
    tmp_path: Path, make_tree
) -> None:
    cli = files_cli(tmp_path, make_tree({"a.txt": b"a"}))
    cli("backup", "letters")
    done = cli("check", "latest", "--read-data-subset", "10%", check=False)
    assert done.returncode == 2 and "not with SNAP" in done.stderr
    done = cli("check", "latest:nosuch", check=False)
    assert done.returncode == 4
    expected = "medvault: error: the repository holds no snapshot of source nosuch"
    assert done.stderr.strip() == expected


# -- selectors -----------------------------------------------------------------------------------


def test_verified_is_the_newest_snapshot_whose_last_drill_passed(tmp_path: Path, make_tree) -> None:
    data = make_tree({"letter.txt": b"v0"})
    cli = files_cli(tmp_path, data)
    done = cli("restore", "verified", "--target", str(tmp_path / "none"), check=False)
    assert done.returncode == 4
    assert done.stderr.strip() == (
        "medvault: error: no snapshot has passed its last drill; run `medvault drill` first"
    )
    packs: list[list[str]] = []
    for n in range(3):
        (data / f"scan{n}.dcm").write_bytes(os.urandom(MiB))
        before = pack_names(cli)
        cli("backup", "letters")
        packs.append(new_packs(cli, before))
    first, second, _third = snapshot_ids(cli)
    cli("drill", "letters", "--snapshot", first)
    cli("drill", "letters", "--snapshot", second)
    assert json.loads(cli("check", "verified", "--json").stdout)["snapshot"] == second

    # The second's newest drill fails (its data damaged meanwhile): it is verified no more.
    victim = packs[1][0]
    with cli.backend() as backend:
        good = backend.load(victim)
    cli.damage(victim, flip)
    assert cli("drill", "letters", "--snapshot", second, check=False).returncode == 23
    cli.damage(victim, lambda _bad: good)

    kept = Kept()
    from medvault.service.restore import FilesRestoreOptions, restore_files

    out = tmp_path / "out"
    done_restore = restore_files(
        session(tmp_path, kept), FilesRestoreOptions("verified:letters", str(out))
    )
    assert done_restore.snapshot_id == first
    (record,) = kept.records
    assert record.snapshots == (first,) and record.details["verified_by"]["drill"]
    assert sorted(p.name for p in out.rglob("*.dcm")) == ["scan0.dcm"]
    done = cli("check", "verified:scans", check=False)
    assert done.returncode == 4
    assert "no snapshot of source scans has passed its last drill" in done.stderr


def test_random_pick_is_recorded_with_its_seed_and_repeatable(tmp_path: Path, make_tree) -> None:
    from medvault.service.check import CheckOptions, check
    from medvault.service.selectors import random_pick

    data = make_tree({"letter.txt": b"v0"})
    cli = files_cli(tmp_path, data)
    for n in range(5):
        (data / "letter.txt").write_bytes(f"version {n}".encode())
        cli("backup", "letters")
    kept = Kept()
    result = check(session(tmp_path, kept), CheckOptions(snapshot="random:30d:letters"))
    assert result.ok
    (record,) = kept.records
    pick = record.details["pick"]
    assert pick["candidates"] == 5 and pick["source"] == "letters" and len(pick["seed"]) == 16
    (picked,) = record.snapshots
    # The record alone repeats the draw: the window, the seed, the snapshots in it.
    import datetime as dt

    from medvault.backends import open_backend
    from medvault.repository.repo import Repository

    repo = Repository.open(open_backend(str(cli.repo)), Given().primary(None))
    again, _ = random_pick(
        repo,
        dt.timedelta(seconds=pick["random_within_s"]),
        "letters",
        pick["seed"],
        now=dt.datetime.fromisoformat(pick["until"]) + dt.timedelta(seconds=1),
    )
    repo.close()
    assert again.id == picked
    done = cli("restore", "random:30d:nosuch", "--target", str(tmp_path / "x"), check=False)
    assert done.returncode == 4 and "no snapshot of nosuch taken since" in done.stderr
    done = cli("restore", "random:soon", "--target", str(tmp_path / "x"), check=False)
    assert done.returncode == 2 and "is not a random pick" in done.stderr
    done = cli("forget", "random:30d", check=False)
    assert done.returncode == 2 and "for restores and checks only" in done.stderr
