"""Fixtures: real repositories on disk or in a local S3 server, the real `medvault` command as
a subprocess.

A test module that sets BACKENDS = ("local", "s3") runs each of its tests that uses a
repository (the `repo`, `cli` or `repo_url` fixtures) once per backend.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.azuriteserver import AzuriteServer
from tests.faultpoints import TALLY, Tallies
from tests.pgcluster import PgWorld, make_pg_tempdir, running_clusters
from tests.receivers import receiver, smtp, smtp_plain  # noqa: F401 (fixtures for every module)
from tests.s3server import S3Server

from medvault.backends import Backend, open_backend
from medvault.repository.keys import Credential
from medvault.repository.repo import Repository

# Whatever a test runs keeps medvault's host state (catalog, records in waiting) in a directory
# of this test run, never in /var/lib/medvault or the user's home.
if "MEDVAULT_STATE_DIR" not in os.environ:
    os.environ["MEDVAULT_STATE_DIR"] = tempfile.mkdtemp(prefix="medvault-state-")
    atexit.register(shutil.rmtree, os.environ["MEDVAULT_STATE_DIR"], ignore_errors=True)

PASSWORD = "correct horse battery staple"
MEDVAULT = str(Path(sys.executable).parent / "medvault")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One server per test process; each test gets buckets of its own. The AWS variables go
    into this process's environment too, so in-process backends find the server."""
    server = S3Server()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture(scope="session")
def azure_server() -> Iterator[AzuriteServer]:
    """One Azurite per test process; each test gets containers of its own. Its connection
    string goes into this process's environment too, so in-process backends find it."""
    server = AzuriteServer()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_kind" in metafunc.fixturenames:
        kinds = getattr(metafunc.module, "BACKENDS", ("local",))
        metafunc.parametrize("backend_kind", kinds, indirect=True)


@pytest.fixture
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = getattr(request, "param", "local")
    return kind


@pytest.fixture
def repo_url(backend_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend_kind == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        return f"s3://{server.new_bucket()}/repo"
    if backend_kind == "azure":
        azure: AzuriteServer = request.getfixturevalue("azure_server")
        return f"azure://{azure.new_container()}/repo"
    return str(tmp_path / "repo")


class Cli:
    """Runs `medvault` against one repository with a passphrase in the environment."""

    def __init__(self, url: str | Path, cwd: Path, location: str | Path | None = None) -> None:
        """`url` is what --repo would say (a path, URL or a name from medvault.toml);
        `location` the path or URL behind a name, for tests that look at the objects."""
        self.url = str(url)
        self.location = str(location or url)
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")} | {
            "MEDVAULT_PASSWORD": PASSWORD,
            "MEDVAULT_REPOSITORY": self.url,
            # Each test's own catalog and records in waiting, never the host's.
            "MEDVAULT_STATE_DIR": str(cwd / "medvault-state"),
        }

    @property
    def repo(self) -> Path:
        """The repository's directory (local repositories only)."""
        assert "://" not in self.location, "this test reads the repository as files"
        return Path(self.location)

    def backend(self) -> Backend:
        return open_backend(self.location)

    def objects(self, folder: str) -> list[str]:
        """Names of the objects in one folder of the repository, whatever the backend."""
        with self.backend() as backend:
            return sorted(obj.name for obj in backend.list(folder))

    def damage(self, name: str, edit: Callable[[bytes], bytes]) -> None:
        """Replace an object's bytes behind medvault's back (a disk or bucket gone bad)."""
        with self.backend() as backend:
            backend.store(name, edit(backend.load(name)), overwrite=True)

    def remove(self, name: str) -> None:
        with self.backend() as backend:
            backend.delete(name)

    def __call__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [MEDVAULT, *args],
            cwd=self.cwd,
            env=self.env | (env or {}),
            capture_output=True,
            text=True,
            input=input,
            timeout=600,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"medvault {' '.join(args)} exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}"
            )
        return done

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [MEDVAULT, *args],
            cwd=self.cwd,
            env=self.env | (env or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still running at the end are continued and killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.communicate()


@pytest.fixture
def cli(repo_url: str, tmp_path: Path) -> Cli:
    return Cli(repo_url, tmp_path)


@pytest.fixture
def initialized_cli(cli: Cli) -> Cli:
    cli("init")
    return cli


@pytest.fixture
def repo(repo_url: str) -> Repository:
    """A repository opened in-process, for tests of the engine itself."""
    return Repository.init(open_backend(repo_url), Credential(passphrase=PASSWORD.encode()))


def reopen(repo: Repository) -> Repository:
    return Repository.open(open_backend(repo.backend.url), Credential(passphrase=PASSWORD.encode()))


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[[dict[str, bytes | str]], Path]:
    """Builds a directory from {relative path: content}; a str content is a symlink target."""

    def build(files: dict[str, bytes | str], root: Path | None = None) -> Path:
        base = root or tmp_path / "data"
        for rel, content in files.items():
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.symlink_to(content)
            else:
                path.write_bytes(content)
        base.mkdir(parents=True, exist_ok=True)
        return base

    return build


def skewed_clock(offset: str) -> dict[str, str]:
    """The environment of a host whose clock is off by `offset` ("+10m", "+1825d"), through
    libfaketime; file times stay real, as a store stamps them with its own clock."""
    found = glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
    if not found:
        pytest.fail("libfaketime is missing: scripts/bootstrap.sh installs Debian's faketime")
    return {"LD_PRELOAD": found[0], "FAKETIME": offset, "NO_FAKE_STAT": "1"}


def tree_digest(root: Path) -> dict[str, tuple[str, int, int, bytes]]:
    """What a restore must reproduce: type, mode, mtime and content (or link target)."""
    out: dict[str, tuple[str, int, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", 0, 0, os.readlink(path).encode())
            elif path.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, st.st_mtime_ns, b"")
            else:
                out[rel] = ("file", st.st_mode & 0o7777, st.st_mtime_ns, path.read_bytes())
    return out


@pytest.fixture
def pg_world() -> Iterator[PgWorld]:
    """A postgres-owned temp dir with a repository and config; clusters made in it always stop."""
    base = make_pg_tempdir()
    with running_clusters() as clusters:
        yield PgWorld(base, clusters)
    shutil.rmtree(base, ignore_errors=True)


# -- the fault-injection suite's counts ------------------------------------------------------

_tallies = Tallies()


@pytest.fixture
def fault_tally(request: pytest.FixtureRequest) -> Iterator[Counter[str]]:
    """Counts a fault test keeps (runs killed, snapshots restored, faults injected); those of
    passing tests are summed and shown at the end of the run."""
    tally: Counter[str] = Counter()
    yield tally
    request.node.user_properties.append((TALLY, dict(tally)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _tallies.add(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = _tallies.lines()
    if lines:
        terminalreporter.section("fault injection")
        for line in lines:
            terminalreporter.write_line(line)
