"""Repositories in Azure Blob Storage (Azurite): `copy` between local, S3 and Azure in every
direction and a secondary on Azure that `replicate` keeps up to date, each restored from;
how credentials are found, and that no error ever shows one."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.azuriteserver import ACCOUNT, KEY, AzuriteServer
from tests.s3faults import Cut, Fault, FlakyProxy, Reply, Request
from tests.test_copy import cli_for, config_for, copy, push_segment
from tests.test_replication import clis, segment, write_config

from conftest import PASSWORD, Cli, S3Server, tree_digest
from medvault.backends import open_backend
from medvault.backends.azure import AzureBackend, AzureOptions
from medvault.config import RepositorySettings
from medvault.errors import BackendError, NotSupported, ObjectExists, UsageError

MiB = 1024 * 1024


def location(kind: str, tmp_path: Path, request: pytest.FixtureRequest, name: str) -> str:
    if kind == "azure":
        azure: AzuriteServer = request.getfixturevalue("azure_server")
        return f"azure://{azure.new_container()}/{name}"
    if kind == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        return f"s3://{s3.new_bucket()}/{name}"
    return str(tmp_path / name)


@pytest.mark.parametrize(
    ("source", "target", "shared_keys"),
    [
        ("local", "azure", False),
        ("azure", "s3", True),
        ("s3", "azure", False),
        ("azure", "local", True),
        ("azure", "azure", False),
    ],
)
def test_copy_between_backends_restores_from_the_copy(
    source: str,
    target: str,
    shared_keys: bool,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    make_tree,
) -> None:
    request.getfixturevalue("azure_server")  # its connection string in every Cli's environment
    if "s3" in (source, target):
        request.getfixturevalue("s3_server")
    locations = (
        location(source, tmp_path, request, "primary"),
        location(target, tmp_path, request, "secondary"),
    )
    config = config_for(tmp_path, *locations)
    primary = cli_for(tmp_path, "primary", config, locations[0])
    secondary = cli_for(tmp_path, "secondary", config, locations[1])
    data = make_tree(
        {"scans/ct.dcm": os.urandom(3 * MiB), "letters/a.txt": b"Referral to cardiology.\n" * 4000}
    )
    primary("init")
    primary("backup", str(data))
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    push_segment(primary, wal, 1)
    if shared_keys:
        secondary("init", "--copy-keys-from", "primary")
    else:
        secondary("init")

    result = copy(primary)
    assert result["mode"] == ("raw" if shared_keys else "re-encrypt")
    assert len(result["copied"]) == 1 and result["wal_copied"] == 2  # a segment + the cluster
    secondary("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out" / str(data).lstrip("/")) == tree_digest(data)
    secondary("check", "--read-data")
    secondary("wal-fetch", "emr", f"{1:08X}{0:08X}{1:08X}", str(tmp_path / "seg"))
    again = copy(primary)
    assert again["copied"] == [] and again["wal_copied"] == 0


def test_replicate_keeps_a_secondary_on_azure_up_to_date(
    azure_server: AzuriteServer, tmp_path: Path, make_tree
) -> None:
    data = make_tree({"scan.dcm": os.urandom(2 * MiB), "note.txt": b"Seen in clinic.\n" * 500})
    offsite_url = f"azure://{azure_server.new_container()}/dr"
    config = write_config(tmp_path, tmp_path / "primary", offsite_url, data)
    primary, offsite = clis(tmp_path, config)
    primary("init")
    offsite("init", "--copy-keys-from", "primary")
    snap = json.loads(primary("backup", "uploads", "--json").stdout)["snapshot"]
    assert [s["id"] for s in json.loads(offsite("snapshots", "--json").stdout)] == [snap]

    wal = tmp_path / "pg_wal"
    wal.mkdir()
    pushed = segment(wal, 1)
    primary("wal-push", "emr", str(pushed))
    offsite("wal-fetch", "emr", pushed.name, str(tmp_path / "from-offsite"))
    assert (tmp_path / "from-offsite").read_bytes() == pushed.read_bytes()
    offsite("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out" / str(data).lstrip("/")) == tree_digest(data)
    offsite("check", "--read-data")


# -- credentials and settings ---------------------------------------------------------------


def without_azure_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("AZURE_STORAGE_"):
            monkeypatch.delenv(key)


def test_an_account_key_from_the_environment_reaches_the_endpoint_of_the_settings(
    azure_server: AzuriteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_azure_env(monkeypatch)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_KEY", KEY)
    settings = RepositorySettings(
        url=f"azure://{azure_server.new_container()}/repo", endpoint=azure_server.endpoint
    )
    with open_backend(settings.url, settings) as backend:
        backend.create()
        backend.store("config", b"{}")
        assert backend.load("config") == b"{}"


def test_a_credential_file_may_hold_a_sas_token_or_a_connection_string(
    azure_server: AzuriteServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import datetime as dt

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    without_azure_env(monkeypatch)
    sas = generate_account_sas(
        ACCOUNT,
        KEY,
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, create=True),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    sas_file = tmp_path / "sas"
    sas_file.write_text(f"?{sas}\n")
    container = azure_server.new_container()
    options = AzureOptions(endpoint=azure_server.endpoint, credential_file=str(sas_file))
    with AzureBackend(f"azure://{container}/repo", options) as backend:
        backend.create()
        backend.store("config", b"by sas")
    conn_file = tmp_path / "connection"
    conn_file.write_text(azure_server.connection_string)
    with AzureBackend(
        f"azure://{container}/repo", AzureOptions(credential_file=str(conn_file))
    ) as backend:
        assert backend.load("config") == b"by sas"


def test_errors_name_what_to_do_and_never_a_key_or_sas_token(
    azure_server: AzuriteServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    without_azure_env(monkeypatch)
    container = azure_server.new_container()
    with pytest.raises(BackendError, match=r"no Azure credentials .*AZURE_STORAGE_KEY"):
        AzureBackend(f"azure://{container}/repo").exists("config")

    wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    options = AzureOptions(endpoint=azure_server.endpoint, account=ACCOUNT, account_key=wrong_key)
    with pytest.raises(BackendError) as raised:
        AzureBackend(f"azure://{container}/repo", options).exists("config")
    assert "access denied" in str(raised.value) and wrong_key not in str(raised.value)

    secret_sig = "sig=c2VjcmV0c2lnbmF0dXJl"
    options = AzureOptions(
        endpoint=f"http://127.0.0.1:{azure_server.port + 0}/{ACCOUNT}",
        sas_token=f"sv=2021-08-06&ss=b&srt=sco&sp=rl&se=2099-01-01T00:00:00Z&{secret_sig}",
    )
    with pytest.raises(BackendError) as raised:
        list(AzureBackend(f"azure://{container}/repo", options).list("data"))
    assert "c2VjcmV0c2lnbmF0dXJl" not in str(raised.value)

    nowhere = AzureOptions(endpoint="http://127.0.0.1:9/acct", account="acct", account_key=KEY)
    backend = AzureBackend("azure://absent/repo", nowhere)
    backend.container._config.retry_policy.total_retries = 0  # no backoff: port 9 never answers
    with pytest.raises(
        BackendError, match=re.escape("cannot reach the Azure endpoint http://127.0.0.1:9")
    ):
        backend.exists("config")


def test_without_immutability_the_container_says_what_it_needs(
    azure_server: AzuriteServer,
) -> None:
    with AzureBackend(f"azure://{azure_server.new_container()}/repo") as backend:
        backend.store("snapshots/s", b"s")
        assert not backend.lock_enabled
        with pytest.raises(NotSupported, match="version-level immutability"):
            backend.set_legal_hold("snapshots/s", True)


def test_a_missing_container_is_named(azure_server: AzuriteServer) -> None:
    with pytest.raises(BackendError, match="container t-nothing-here does not exist"):
        AzureBackend("azure://t-nothing-here/repo").load("config")


@pytest.mark.parametrize("url", ["azure://", "azure://Upper/x", "azure://a--b/x", "azure://ab/x"])
def test_container_names_azure_refuses_are_refused_before_any_request(url: str) -> None:
    with pytest.raises(UsageError, match="container"):
        AzureBackend(url)


def test_the_cli_reaches_an_azure_repository_named_in_the_config(
    azure_server: AzuriteServer, tmp_path: Path, make_tree
) -> None:
    url = f"azure://{azure_server.new_container()}/clinic"
    config = tmp_path / "medvault.toml"
    config.write_text(f'[repository.cloud]\nurl = "{url}"\nendpoint = "{azure_server.endpoint}"\n')
    cli = Cli("cloud", tmp_path, url)
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli.env.pop("AZURE_STORAGE_CONNECTION_STRING")
    cli.env |= {"AZURE_STORAGE_ACCOUNT": ACCOUNT, "AZURE_STORAGE_KEY": KEY}
    data = make_tree({"a.txt": b"note\n" * 100})
    cli("init")
    cli("backup", str(data))
    cli("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out" / str(data).lstrip("/")) == tree_digest(data)
    done = cli("snapshots", env={"AZURE_STORAGE_KEY": "V3Jvbmc="}, check=False)
    assert done.returncode != 0 and "access denied" in done.stderr
    assert "V3Jvbmc=" not in done.stderr and "Traceback" not in done.stderr


def test_a_restored_server_gets_the_azure_keys_only_from_where_medvault_found_its_own() -> None:
    from medvault import childenv

    environ = {
        "AZURE_STORAGE_ACCOUNT": "clinic",
        "AZURE_STORAGE_KEY": "a-key",
        "AWS_SECRET_ACCESS_KEY": "not-for-azure",
    }
    carried = childenv.store_access("azure://c/emr", None, keys_in_config=False, environ=environ)
    assert carried == {"AZURE_STORAGE_ACCOUNT": "clinic", "AZURE_STORAGE_KEY": "a-key"}
    from_file = childenv.store_access("azure://c/emr", None, keys_in_config=True, environ=environ)
    assert from_file == {"AZURE_STORAGE_ACCOUNT": "clinic"}


# -- the SDK is imported only for azure:// ---------------------------------------------------

WITHOUT_AZURE = """
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "azure" or name.startswith("azure."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["medvault", *sys.argv[1:]]
from medvault.cli.entry import main
main()
"""


def test_without_the_azure_sdk_an_azure_repository_names_the_package(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_AZURE, "--repo", "azure://clinic-backups/emr", "snapshots"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env | {"MEDVAULT_PASSWORD": PASSWORD},
    )
    assert done.returncode == 2, done.stderr
    assert "pip install azure-storage-blob" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_azure_sdk_is_not_loaded_for_local_or_s3_repositories(tmp_path: Path) -> None:
    code = (
        "import sys; from medvault.backends import open_backend; "
        f"open_backend({str(tmp_path / 'r')!r}); open_backend('s3://clinic/emr'); "
        "print(any(m.startswith('azure') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_keys_in_the_config_are_refused_unless_plaintext_credentials_insists(
    azure_server: AzuriteServer, tmp_path: Path, make_tree
) -> None:
    url = f"azure://{azure_server.new_container()}/clinic"
    config = tmp_path / "medvault.toml"
    section = f'[repository.cloud]\nurl = "{url}"\nendpoint = "{azure_server.endpoint}"\n'
    config.write_text(section + f'account = "{ACCOUNT}"\naccount_key = "{KEY}"\n')
    cli = Cli("cloud", tmp_path, url)
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli.env.pop("AZURE_STORAGE_CONNECTION_STRING")
    done = cli("init", check=False)
    assert done.returncode != 0 and "plaintext_credentials = true" in done.stderr
    assert KEY not in done.stderr and len(done.stderr.strip().splitlines()) == 1

    config.write_text(
        section + f'account = "{ACCOUNT}"\naccount_key = "{KEY}"\nplaintext_credentials = true\n'
    )
    cli("init")
    data = make_tree({"a.txt": b"note\n"})
    cli("backup", str(data))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('region = "eu-west-1"', "region: only applies to s3://"),
        ("append_only = true", "version-level immutability"),
    ],
)
def test_keys_of_other_stores_are_refused_in_an_azure_section(extra: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RepositorySettings.model_validate_strings({"url": "azure://c-1/x"} | _one(extra))


def _one(line: str) -> dict[str, str]:
    key, _, value = line.partition(" = ")
    return {key: value.strip('"')}


def test_azure_keys_are_refused_in_an_s3_section() -> None:
    with pytest.raises(ValueError, match="account: only applies to azure://"):
        RepositorySettings(url="s3://bucket/x", account="clinic")


# -- a store and a network that misbehave ---------------------------------------------------


def test_a_write_whose_answer_was_lost_counts_as_written_and_a_cut_read_is_read_again(
    azure_server: AzuriteServer,
) -> None:
    """The SDK asks again after a 500 that came once the blob was written: the retry's
    If-None-Match then meets the blob the first attempt wrote, which is this write."""
    faults = {"lost": Reply(500, "<Code>InternalError</Code>", after_store=True), "cut": Cut()}

    def answer(request: Request) -> Fault | None:
        if "/data/" not in request.path:
            return None
        if request.method == "PUT" and "lost" in faults:
            return faults.pop("lost")
        if request.method == "GET" and "cut" in faults:
            return faults.pop("cut")
        return None

    url = f"azure://{azure_server.new_container()}/repo"
    with FlakyProxy(f"http://127.0.0.1:{azure_server.port}", answer) as proxy:
        settings = RepositorySettings(
            url=url,
            endpoint=f"{proxy.endpoint}/{ACCOUNT}",
            account=ACCOUNT,
            account_key=KEY,
            plaintext_credentials=True,
        )
        with open_backend(url, settings) as backend:
            backend.create()
            data = os.urandom(300_000)
            backend.store("data/ab/pack", data)
            assert backend.load("data/ab/pack") == data
            with pytest.raises(ObjectExists):
                backend.store("data/ab/pack", os.urandom(10))  # not retried: another writer's
        # The SDK leaves the 500's connection to the garbage collector (a reference cycle),
        # and the proxy's close waits for every connection to end.
        gc.collect()
    assert proxy.injected == {"500 InternalError after the store wrote": 1, "body cut short": 1}
