"""The Backend contract: every verb, over every backend, in one suite.

Each test runs over a local directory, an append-only local directory, S3 over HTTP and over
TLS (a certificate made for the run), S3 with Object Lock, Azure Blob Storage (Azurite), and
the DelayedBackend wrapper. The S3 and Azure backends are built by open_backend, so they run
inside the retry and window wrappers as medvault uses them. Azurite implements neither blob
versions nor immutability policies: Azure runs as a store without them (the "not supported"
test), and the locking tests run on S3 alone. Where backends differ, the test asks the
backend (`immutable`) or checks its answer (`lock_enabled`), so a backend that answers those
questions wrongly fails here too.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.azuriteserver import AzuriteServer
from tests.s3server import S3Server

from medvault.backends import Backend, open_backend
from medvault.backends.delayed import DelayedBackend
from medvault.backends.local import LocalBackend
from medvault.errors import (
    BackendError,
    NotSupported,
    ObjectExists,
    ObjectLocked,
    ObjectNotFound,
    RepositoryExists,
)

KINDS = (
    "local",
    "local append-only",
    "s3 http",
    "s3 tls",
    "s3 object lock",
    "azure",
    "delayed local",
)
LOCKING = ("s3 object lock",)
PAGE = 1000  # S3 lists at most this many objects per request


@pytest.fixture(scope="module")
def s3_tls_server() -> Iterator[S3Server]:
    server = S3Server(tls=True)
    yield server
    server.stop()


def _created(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    store: Backend
    if kind.startswith("s3"):
        server: S3Server = request.getfixturevalue("s3_server")
        if kind == "s3 tls":
            server = request.getfixturevalue("s3_tls_server")
            for key, value in server.env.items():
                monkeypatch.setenv(key, value)
        bucket = server.new_bucket(object_lock=kind == "s3 object lock")
        store = open_backend(f"s3://{bucket}/repo")
    elif kind == "azure":
        azure: AzuriteServer = request.getfixturevalue("azure_server")
        store = open_backend(f"azure://{azure.new_container()}/repo")
    elif kind == "delayed local":
        store = DelayedBackend(LocalBackend(tmp_path / "store"), 0.001)
    else:
        store = LocalBackend(tmp_path / "store", append_only=kind == "local append-only")
    store.create()
    with store:
        yield store


@pytest.fixture(params=KINDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    yield from _created(request.param, request, tmp_path, monkeypatch)


@pytest.fixture(params=LOCKING)
def locking_backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    """A store with Object Lock."""
    for store in _created(request.param, request, tmp_path, monkeypatch):
        assert store.lock_enabled
        yield store


@pytest.fixture(params=[kind for kind in KINDS if kind not in LOCKING])
def plain_backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    """A store without Object Lock."""
    for store in _created(request.param, request, tmp_path, monkeypatch):
        assert not store.lock_enabled
        yield store


def later(days: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


# -- create, store, load, exists ---------------------------------------------------------


def test_a_new_store_is_empty_and_a_used_one_cannot_be_created_again(backend: Backend) -> None:
    assert list(backend.list("data")) == []
    assert not backend.exists("config")
    backend.store("config", b"{}")
    with pytest.raises(RepositoryExists):
        backend.create()


def test_an_object_reads_back_as_stored(backend: Backend) -> None:
    data = os.urandom(100_000)
    backend.store("data/ab/pack", data)
    assert backend.exists("data/ab/pack")
    assert backend.load("data/ab/pack") == data


def test_an_empty_object_is_an_object(backend: Backend) -> None:
    backend.store("snapshots/empty", b"")
    assert backend.exists("snapshots/empty")
    assert backend.load("snapshots/empty") == b""


def test_a_name_is_never_written_twice_without_overwrite(backend: Backend) -> None:
    backend.store("index/one", b"first")
    with pytest.raises(ObjectExists):
        backend.store("index/one", b"second")
    assert backend.load("index/one") == b"first"


def test_of_writers_racing_for_one_name_exactly_one_wins(backend: Backend) -> None:
    """Stores are if-absent: two hosts writing the same name never replace each other."""
    start = threading.Barrier(8)

    def write(n: int) -> bool:
        start.wait()
        try:
            backend.store("snapshots/contested", f"writer {n}".encode())
        except ObjectExists:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        won = [n for n, ok in enumerate(pool.map(write, range(8))) if ok]
    assert len(won) == 1
    assert backend.load("snapshots/contested") == f"writer {won[0]}".encode()


def test_overwrite_replaces_an_object_unless_the_store_is_append_only(backend: Backend) -> None:
    backend.store("snapshots/x", b"old" * 1000)
    backend.load("snapshots/x", 0, 10)  # a ranged read first: a cache must not keep it
    if backend.immutable:
        with pytest.raises(ObjectLocked):
            backend.store("snapshots/x", b"new" * 1000, overwrite=True)
        assert backend.load("snapshots/x", 0, 9) == b"oldoldold"
    else:
        backend.store("snapshots/x", b"new" * 1000, overwrite=True)
        assert backend.load("snapshots/x", 0, 9) == b"newnewnew"
    backend.store("snapshots/fresh", b"made", overwrite=True)  # overwrite of nothing: a store
    assert backend.load("snapshots/fresh") == b"made"


def test_locks_can_always_be_rewritten_and_removed(backend: Backend) -> None:
    """Writers coordinate through locks/, even where nothing else may change."""
    backend.store("locks/" + "a" * 32, b"v1")
    backend.store("locks/" + "a" * 32, b"v2", overwrite=True)
    assert backend.load("locks/" + "a" * 32) == b"v2"
    backend.delete("locks/" + "a" * 32)
    assert not backend.exists("locks/" + "a" * 32)


# -- ranges --------------------------------------------------------------------------------


def test_ranges_read_exactly_what_they_ask(backend: Backend) -> None:
    data = os.urandom(3_000_000)
    backend.store("data/cd/pack", data)
    assert backend.load("data/cd/pack", 0, 10) == data[:10]
    assert backend.load("data/cd/pack", 1_234_567, 100_000) == data[1_234_567:1_334_567]
    assert backend.load("data/cd/pack", 2_999_990) == data[2_999_990:]  # to the end
    assert backend.load("data/cd/pack", len(data) - 1, 1) == data[-1:]


def test_a_range_past_the_end_is_an_error_unless_inexact(backend: Backend) -> None:
    data = os.urandom(50_000)
    backend.store("data/ef/pack", data)
    with pytest.raises(BackendError) as raised:
        backend.load("data/ef/pack", 49_000, 2_000)
    assert not isinstance(raised.value, ObjectNotFound)
    assert backend.load("data/ef/pack", 49_000, 2_000, exact=False) == data[49_000:]
    assert backend.load("data/ef/pack", 60_000, 2_000, exact=False) == b""


# -- not found, names ----------------------------------------------------------------------


def test_a_missing_object_is_object_not_found(backend: Backend) -> None:
    assert not backend.exists("snapshots/absent")
    with pytest.raises(ObjectNotFound):
        backend.load("snapshots/absent")
    with pytest.raises(ObjectNotFound):
        backend.load("snapshots/absent", 10, 20)
    with pytest.raises(ObjectNotFound):
        backend.delete("locks/" + "b" * 32)
    if not backend.immutable:
        with pytest.raises(ObjectNotFound):
            backend.delete("snapshots/absent")


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../x", "data/../config", "data//x", "a b", ".hidden", "dätä"]
)
def test_names_that_are_not_plain_are_refused_by_every_verb(backend: Backend, name: str) -> None:
    with pytest.raises(BackendError, match="invalid object name"):
        backend.store(name, b"x")
    with pytest.raises(BackendError, match="invalid object name"):
        backend.load(name)
    with pytest.raises(BackendError, match="invalid object name"):
        backend.exists(name)
    with pytest.raises(BackendError, match="invalid object name"):
        backend.delete(name)
    with pytest.raises(BackendError, match="invalid object name"):
        list(backend.list(name))


# -- list ----------------------------------------------------------------------------------


def test_a_listing_holds_its_folder_and_the_folders_below(backend: Backend) -> None:
    names = ["wal/emr/00000001/a", "wal/emr/00000002/b", "wal/pacs/00000001/c", "walrus/d"]
    for name in names:
        backend.store(name, name.encode())
    listed = {obj.name: obj for obj in backend.list("wal")}
    assert sorted(listed) == names[:3]
    assert all(listed[name].size == len(name) for name in listed)
    assert all(obj.modified is not None for obj in listed.values())
    assert sorted(obj.name for obj in backend.list("wal/emr")) == names[:2]
    assert list(backend.list("wal/emr/00000003")) == []
    assert list(backend.list("nothing")) == []


def test_a_listing_goes_on_past_the_first_page(backend: Backend) -> None:
    names = [f"snapshots/{n:04d}" for n in range(PAGE + 1)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: backend.store(name, b"s"), names))
    assert sorted(obj.name for obj in backend.list("snapshots")) == names


# -- delete --------------------------------------------------------------------------------


def test_delete_removes_an_object_unless_the_store_is_append_only(backend: Backend) -> None:
    backend.store("data/01/pack", b"p" * 5000)
    backend.load("data/01/pack", 0, 100)  # a ranged read first: a cache must not keep it
    if backend.immutable:
        with pytest.raises(ObjectLocked):
            backend.delete("data/01/pack")
        assert backend.load("data/01/pack") == b"p" * 5000
        return
    backend.delete("data/01/pack")
    assert not backend.exists("data/01/pack")
    with pytest.raises(ObjectNotFound):
        backend.load("data/01/pack", 0, 100)
    assert list(backend.list("data")) == []


# -- Object Lock ---------------------------------------------------------------------------


def test_without_object_lock_retention_and_legal_holds_are_not_supported(
    plain_backend: Backend,
) -> None:
    backend = plain_backend
    backend.store("snapshots/s", b"s")
    assert backend.retention("snapshots/s") is None
    with pytest.raises(NotSupported):
        backend.extend_retention("snapshots/s", later(1))
    with pytest.raises(NotSupported):
        backend.set_legal_hold("snapshots/s", True)
    with pytest.raises(NotSupported):
        backend.legal_hold("snapshots/s")
    with pytest.raises(NotSupported):
        backend.store("snapshots/t", b"t", retain_until=later(1))
    assert not backend.exists("snapshots/t")


def test_a_retained_object_can_be_neither_deleted_nor_overwritten(locking_backend: Backend) -> None:
    backend = locking_backend
    until = later(2)
    backend.store("snapshots/kept", b"k", retain_until=until)
    retained = backend.retention("snapshots/kept")
    assert retained is not None and abs((retained - until).total_seconds()) < 1
    with pytest.raises(ObjectLocked):
        backend.delete("snapshots/kept")
    with pytest.raises(ObjectLocked):
        backend.store("snapshots/kept", b"other", overwrite=True)
    assert backend.load("snapshots/kept") == b"k"
    backend.extend_retention("snapshots/kept", later(3))
    extended = backend.retention("snapshots/kept")
    assert extended is not None and extended > until + dt.timedelta(hours=23)
    with pytest.raises(ObjectNotFound):
        backend.retention("snapshots/absent")


def test_a_legal_hold_keeps_an_object_until_it_is_lifted(locking_backend: Backend) -> None:
    backend = locking_backend
    backend.store("data/02/pack", b"held")
    assert backend.retention("data/02/pack") is None
    assert not backend.legal_hold("data/02/pack")
    backend.set_legal_hold("data/02/pack", True)
    assert backend.legal_hold("data/02/pack")
    with pytest.raises(ObjectLocked):
        backend.delete("data/02/pack")
    backend.set_legal_hold("data/02/pack", False)
    assert not backend.legal_hold("data/02/pack")
    backend.delete("data/02/pack")
    assert not backend.exists("data/02/pack")
    with pytest.raises(ObjectNotFound):
        backend.set_legal_hold("data/02/absent", True)
    with pytest.raises(ObjectNotFound):
        backend.legal_hold("data/02/absent")


def test_locks_are_never_retained(locking_backend: Backend) -> None:
    backend = locking_backend
    name = "locks/" + "c" * 32
    backend.store(name, b"lock", retain_until=later(1))
    backend.store(name, b"lock again", overwrite=True)
    backend.delete(name)
    assert not backend.exists(name)
