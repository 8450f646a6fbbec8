"""Repository administration as service calls: init, key slots, check, unlock, copy, repair
and prune each return a frozen result and leave one run record that says what they did,
and never a passphrase."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.test_service_runs import Given, Kept

from conftest import PASSWORD, Cli
from medvault.backends import open_backend
from medvault.config import RepositorySettings
from medvault.errors import RepositoryExists, RepositoryLocked, UsageError
from medvault.repository.keys import Credential
from medvault.repository.repo import Repository
from medvault.service.admin import InitOptions, init, unlock
from medvault.service.check import CheckOptions, check
from medvault.service.copy import CopyOptions, RepairOptions, copy, repair
from medvault.service.keys import KeyAddOptions, key_add, key_list, key_passwd, key_remove
from medvault.service.prune import PruneOptions, prune
from medvault.service.runs import Caller, RunRecord
from medvault.service.session import Session

NEW_PASSPHRASE = "a second passphrase for the night shift"
ADMIN = Caller(user="it.admin", shell="api", host="backup-1")


@pytest.fixture(autouse=True)
def no_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service reads no environment; the session is all there is."""
    for name in [n for n in os.environ if n.startswith("MEDVAULT_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def kept() -> Iterator[Kept]:
    """Every record a test's sessions leave; none may hold a passphrase."""
    records = Kept()
    yield records
    for record in records.records:
        shown = repr(record) + json.dumps(record._asdict(), default=str)
        assert PASSWORD not in shown and NEW_PASSPHRASE not in shown


def session(kept: Kept, repository: str, passphrase: str = PASSWORD) -> Session:
    return Session(
        credentials=Given(passphrase), caller=ADMIN, repository=repository, observers=[kept]
    )


def passphrase(text: str) -> Credential:
    return Credential(passphrase=text.encode(), origin="test")


def created(
    kept: Kept, tmp_path: Path, name: str = "repo", copy_keys_from: str | None = None
) -> str:
    url = str(tmp_path / name)
    options = InitOptions(credential=passphrase(PASSWORD), copy_keys_from=copy_keys_from)
    init(session(kept, url), options)
    return url


def backed_up(tmp_path: Path, url: str, make_tree: Callable[..., Path]) -> str:
    """One snapshot of a small tree, taken by the CLI; its id."""
    data = make_tree(
        {"scans/mri.dcm": os.urandom(2_000_000), "letters/a.txt": b"Referral.\n" * 3000},
        tmp_path / f"data-{Path(url).name}",
    )
    Cli(url, tmp_path)("backup", str(data))
    (snapshot,) = Cli(url, tmp_path).objects("snapshots")
    return snapshot.rsplit("/", 1)[1]


def last(kept: Kept, operation: str) -> RunRecord:
    return [r for r in kept.records if r.operation == operation][-1]


def biggest_pack(url: str) -> str:
    with open_backend(url) as backend:
        return max(backend.list("data"), key=lambda o: o.size).name


# -- init and keys -----------------------------------------------------------------------


def test_init_creates_a_repository_and_records_its_first_slot(kept: Kept, tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    done = init(session(kept, url), InitOptions(credential=passphrase(PASSWORD), label="main"))
    assert done.url == url and len(done.repo_id) == 32 and done.new_key_file is None
    record = last(kept, "init")
    assert (record.status, record.repository, record.error) == ("ok", url, None)
    assert record.details["repo_id"] == done.repo_id
    assert record.details["added_slot"] == done.slot_id
    assert (record.user, record.shell) == ("it.admin", "api")


def test_init_over_a_repository_asks_for_no_passphrase_and_writes_no_key_file(
    kept: Kept, tmp_path: Path
) -> None:
    url = created(kept, tmp_path)
    asked: list[RepositorySettings | None] = []

    def ask(settings: RepositorySettings | None) -> Credential:
        asked.append(settings)
        return passphrase(PASSWORD)

    with pytest.raises(RepositoryExists):
        init(session(kept, url), InitOptions(credential=ask))
    key_file = tmp_path / "new.key"
    with pytest.raises(RepositoryExists):
        init(session(kept, url), InitOptions(new_key_file=str(key_file)))
    assert asked == [] and not key_file.exists()
    record = last(kept, "init")
    assert record.status == "failed" and record.error is not None
    assert "already exists" in record.error


def test_keys_are_added_listed_and_removed_by_slot_id(kept: Kept, tmp_path: Path) -> None:
    url = created(kept, tmp_path)
    admin = session(kept, url)
    added = key_add(admin, KeyAddOptions(credential=passphrase(NEW_PASSPHRASE), label="night"))
    key_file = tmp_path / "offline.key"
    by_file = key_add(admin, KeyAddOptions(new_key_file=str(key_file)))
    assert (added.kind, by_file.kind) == ("passphrase", "keyfile") and key_file.exists()

    slots = key_list(session(kept, url, NEW_PASSPHRASE)).slots
    assert {s.slot_id for s in slots} >= {added.slot_id, by_file.slot_id} and len(slots) == 3
    assert [s.slot_id for s in slots if s.current] == [added.slot_id]
    assert all(s.usable and s.problem is None for s in slots)

    removed = key_remove(admin, added.slot_id[:8])
    assert removed.slot_id == added.slot_id
    assert len(key_list(admin).slots) == 2

    record = last(kept, "key-add")
    assert record.status == "ok" and record.details["added_slot"] == by_file.slot_id
    assert record.details["kind"] == "keyfile" and record.repository == url
    assert last(kept, "key-list").details == {"slots": 2}
    assert last(kept, "key-remove").details["removed_slot"] == added.slot_id


def test_removing_the_last_key_slot_is_refused(kept: Kept, tmp_path: Path) -> None:
    url = created(kept, tmp_path)
    (only,) = key_list(session(kept, url)).slots
    with pytest.raises(UsageError, match="last key slot"):
        key_remove(session(kept, url), only.slot_id)
    record = last(kept, "key-remove")
    assert record.status == "refused" and record.error is not None
    assert "last key slot" in record.error and "\n" not in record.error
    assert record.details == {"slot": only.slot_id}
    assert len(key_list(session(kept, url)).slots) == 1


def test_a_new_passphrase_replaces_the_slot_that_opened_the_repository(
    kept: Kept, tmp_path: Path
) -> None:
    url = created(kept, tmp_path)
    (old,) = key_list(session(kept, url)).slots
    changed = key_passwd(session(kept, url), lambda _settings: passphrase(NEW_PASSPHRASE))
    assert changed.replaced == old.slot_id and changed.slot_id != old.slot_id
    assert [s.slot_id for s in key_list(session(kept, url, NEW_PASSPHRASE)).slots] == [
        changed.slot_id
    ]
    record = last(kept, "key-passwd")
    assert record.details == {"added_slot": changed.slot_id, "removed_slot": old.slot_id}


# -- check and unlock --------------------------------------------------------------------


def test_a_clean_repository_checks_ok_with_the_bytes_it_read(
    kept: Kept, tmp_path: Path, make_tree: Callable[..., Path]
) -> None:
    url = created(kept, tmp_path)
    backed_up(tmp_path, url, make_tree)
    progress: list[int] = []
    done = check(session(kept, url), CheckOptions(read_data=True), on_progress=progress.append)
    assert done.ok and done.snapshots == 1 and done.packs_read == done.packs > 0
    record = last(kept, "check")
    assert (record.status, record.error) == ("ok", None)
    assert record.bytes_read == done.bytes_read > 0
    assert record.details["errors"] == 0 and record.details["read_data"] is True


def test_damage_found_is_returned_and_the_check_recorded_as_failed(
    kept: Kept, tmp_path: Path, make_tree: Callable[..., Path]
) -> None:
    url = created(kept, tmp_path)
    snapshot = backed_up(tmp_path, url, make_tree)
    with open_backend(url) as backend:
        backend.delete(biggest_pack(url))
    done = check(session(kept, url), CheckOptions())
    assert not done.ok and list(done.affected) == [snapshot]
    record = last(kept, "check")
    assert record.status == "failed" and record.error is not None
    assert record.error.startswith(f"{len(done.errors)} error(s) found: ")
    assert record.details["damaged_snapshots"] == [snapshot]


def test_a_subset_out_of_range_is_refused(kept: Kept, tmp_path: Path) -> None:
    url = created(kept, tmp_path)
    with pytest.raises(UsageError, match="between 0% and 100%"):
        check(session(kept, url), CheckOptions(read_data=True, subset=150))
    assert last(kept, "check").status == "refused"


def test_unlock_removes_malformed_locks_and_with_remove_all_live_ones(
    kept: Kept, tmp_path: Path
) -> None:
    url = created(kept, tmp_path)
    with open_backend(url) as backend:
        backend.store("locks/" + "0" * 32, b"not a lock")
    repo = Repository.open(open_backend(url), passphrase(PASSWORD))
    held = repo.lock(exclusive=False, purpose="backup")
    held.acquire()
    try:
        first = unlock(session(kept, url))
        assert len(first.removed) == 1 and len(first.remaining) == 1
        record = last(kept, "unlock")
        assert record.details["removed"] == list(first.removed)
        assert record.details["remove_all"] is False

        second = unlock(session(kept, url), remove_all=True)
        assert len(second.removed) == 1 and second.remaining == ()
        assert "backup" in last(kept, "unlock").details["removed"][0]
    finally:
        held.release()


# -- copy, repair, prune -----------------------------------------------------------------


def test_copy_between_two_local_repositories_records_the_snapshots_it_made(
    kept: Kept, tmp_path: Path, make_tree: Callable[..., Path]
) -> None:
    origin = created(kept, tmp_path, "origin")
    target = created(kept, tmp_path, "target")
    source_id = backed_up(tmp_path, origin, make_tree)
    options = CopyOptions(from_repo=origin, to_repo=target)
    done = copy(session(kept, target), options)
    assert done.mode == "re-encrypt" and len(done.copied) == 1 and done.present == ()
    record = last(kept, "copy")
    assert (record.status, record.repository) == ("ok", target)
    assert record.snapshots == done.copied
    assert record.bytes_read == done.bytes_read > 0
    assert record.bytes_stored == done.bytes_stored > 0
    assert record.details["from"] == origin and record.details["copied"] == 1

    again = copy(session(kept, target), options)
    assert again.copied == () and again.present == (source_id,) and again.bytes_stored == 0
    assert last(kept, "copy").snapshots == ()


def test_copy_refuses_the_same_repository_on_both_sides(kept: Kept, tmp_path: Path) -> None:
    url = created(kept, tmp_path)
    with pytest.raises(UsageError, match="same repository"):
        copy(session(kept, url), CopyOptions(from_repo=url, to_repo=url))
    assert last(kept, "copy").status == "refused"


def test_repair_replaces_a_missing_pack_from_the_second_site(
    kept: Kept, tmp_path: Path, make_tree: Callable[..., Path]
) -> None:
    primary = created(kept, tmp_path, "primary")
    offsite = created(kept, tmp_path, "offsite", copy_keys_from=primary)
    assert last(kept, "init").details["keys_shared_with"] == primary
    backed_up(tmp_path, primary, make_tree)
    assert copy(session(kept, primary), CopyOptions(primary, offsite)).mode == "raw"
    pack = biggest_pack(primary)
    with open_backend(primary) as backend:
        backend.delete(pack)

    done = repair(session(kept, primary), RepairOptions(from_repo=offsite, read_data=False))
    assert done.ok and done.packs_replaced == (pack.rsplit("/", 1)[1],)
    record = last(kept, "repair")
    assert (record.status, record.repository) == ("ok", primary)
    assert record.details["packs_replaced"] == 1 and record.details["from"] == offsite
    assert check(session(kept, primary), CheckOptions(read_data=True)).ok


def test_prune_reports_what_it_freed_in_its_record(
    kept: Kept, tmp_path: Path, make_tree: Callable[..., Path]
) -> None:
    url = created(kept, tmp_path)
    snapshot = backed_up(tmp_path, url, make_tree)
    Repository.open(open_backend(url), passphrase(PASSWORD)).delete_snapshot(snapshot)

    dry = prune(session(kept, url), PruneOptions(dry_run=True, young="0s"))
    assert dry.dry_run and dry.packs.condemned_packs > 0 and dry.packs.freed_bytes == 0
    done = prune(session(kept, url), PruneOptions(young="0s"))
    assert done.packs.deleted_packs > 0 and done.packs.freed_bytes > 0
    assert done.wal is not None and done.wal.deleted == 0
    record = last(kept, "prune")
    assert record.status == "ok" and record.details == done.as_dict()
    assert record.details["freed_bytes"] == done.packs.freed_bytes
    assert record.details["dry_run"] is False and record.details["wal"]["deleted"] == 0
    with open_backend(url) as backend:
        assert list(backend.list("data")) == []


def test_prune_while_another_prune_holds_the_repository_is_refused(
    kept: Kept, tmp_path: Path
) -> None:
    url = created(kept, tmp_path)
    repo = Repository.open(open_backend(url), passphrase(PASSWORD))
    with repo.lock(exclusive=True, purpose="key change"), pytest.raises(RepositoryLocked):
        prune(session(kept, url), PruneOptions())
    record = last(kept, "prune")
    assert record.status == "refused" and record.error is not None
    assert record.error.startswith("repository is locked")


def test_bad_prune_options_are_refused_before_the_repository_is_opened(
    kept: Kept, tmp_path: Path
) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="--young"):
        prune(session(kept, missing), PruneOptions(young="soon"))
    with pytest.raises(UsageError, match="--repack-threshold"):
        prune(session(kept, missing), PruneOptions(repack_threshold=0))
    assert [r.status for r in kept.records] == ["refused", "refused"]
