"""The S3 backend against a real S3-compatible server (moto's, over HTTP on 127.0.0.1):
what a DBA sees when the bucket, the endpoint or the credentials are wrong, multipart
uploads, server-side encryption. The store's faults (throttling, server errors, timeouts,
bodies cut short) are tests/test_fault_injection.py's.

The engine's own tests (test_engine, test_backup_restore, test_check, test_keys) run against
this backend too, through BACKENDS."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pgcluster import free_port
from tests.s3faults import FlakyProxy, Reply, Request
from tests.test_pg_wal import crafted_segment

from conftest import PASSWORD, Cli, S3Server, tree_digest
from medvault.backends import open_backend
from medvault.backends.s3 import MULTIPART_THRESHOLD
from medvault.backends.wrapper import BackendWrapper


def one_line(text: str) -> bool:
    return text.strip().count("\n") == 0 and "Traceback" not in text


def write_config(path: Path, url: str, **keys: object) -> Path:
    lines = ["[repository.offsite]", f'url = "{url}"']
    for key, value in keys.items():
        lines.append(f"{key} = " + ("true" if value is True else f'"{value}"'))
    path.write_text("\n".join(lines) + "\n")
    return path


def configured_cli(tmp_path: Path, url: str, **keys: object) -> Cli:
    cli = Cli("offsite", tmp_path)
    cli.env["MEDVAULT_CONFIG"] = str(write_config(tmp_path / "medvault.toml", url, **keys))
    return cli


def test_init_creates_a_missing_bucket_and_refuses_a_used_prefix(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = f"fresh-{os.urandom(4).hex()}"
    cli = Cli(f"s3://{bucket}/clinic/emr", tmp_path)
    cli("init")
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert "clinic/emr/config" in keys and all(k.startswith("clinic/emr/") for k in keys)
    again = cli("init", check=False)
    assert again.returncode == 10 and "not empty" in again.stderr and one_line(again.stderr)
    # A neighbouring prefix in the same bucket is a repository of its own.
    Cli(f"s3://{bucket}/clinic/pacs", tmp_path)("init")


def test_a_missing_bucket_is_named(s3_server: S3Server, tmp_path: Path) -> None:
    done = Cli("s3://no-such-bucket-here/repo", tmp_path)("snapshots", check=False)
    assert done.returncode == 5 and one_line(done.stderr)
    assert "bucket no-such-bucket-here does not exist" in done.stderr


def test_an_unreachable_endpoint_is_one_line(s3_server: S3Server, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    cli = Cli(f"s3://{s3_server.new_bucket()}/repo", tmp_path)
    done = cli("snapshots", env={"AWS_ENDPOINT_URL": nowhere}, check=False)
    assert done.returncode == 5 and one_line(done.stderr)
    assert f"cannot reach the S3 endpoint {nowhere}" in done.stderr


@pytest.fixture(scope="module")
def authenticating_s3() -> Iterator[tuple[S3Server, dict[str, str]]]:
    """A second server that checks signatures: a user with full S3 rights and a bucket."""
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"  # the three IAM calls below
    try:
        server = S3Server()
    finally:
        del os.environ["INITIAL_NO_AUTH_ACTION_COUNT"]
    try:
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="backup")
        iam.put_user_policy(
            UserName="backup",
            PolicyName="s3",
            PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
            '"Action": "s3:*", "Resource": "*"}]}',
        )
        key = iam.create_access_key(UserName="backup")["AccessKey"]
        creds = {
            "AWS_ENDPOINT_URL": server.endpoint,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        yield server, creds
    finally:
        server.stop()


def test_wrong_credentials_get_access_denied_without_the_secret_shown(
    authenticating_s3: tuple[S3Server, dict[str, str]], tmp_path: Path
) -> None:
    _, creds = authenticating_s3
    cli = Cli("s3://signed-bucket/repo", tmp_path)
    cli("init", env=creds)
    cli("snapshots", env=creds)
    wrong = creds | {"AWS_SECRET_ACCESS_KEY": "not-the-secret-at-all"}
    done = cli("snapshots", env=wrong, check=False)
    assert done.returncode == 5 and one_line(done.stderr)
    assert "access denied" in done.stderr and "SignatureDoesNotMatch" in done.stderr
    unknown = creds | {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNUNKNOWN00"}
    done = cli("snapshots", env=unknown, check=False)
    assert done.returncode == 5 and "access denied" in done.stderr
    for secret in (creds["AWS_SECRET_ACCESS_KEY"], "not-the-secret-at-all", PASSWORD):
        assert secret not in done.stderr + done.stdout


def test_credentials_in_the_config_file_are_refused_unless_insisted_on(
    s3_server: S3Server, tmp_path: Path
) -> None:
    url = f"s3://{s3_server.new_bucket()}/repo"
    plain = {"access_key_id": "medvault-test", "secret_access_key": "medvault-test-secret"}
    cli = configured_cli(tmp_path, url, **plain)
    done = cli("init", check=False)
    assert done.returncode == 2 and one_line(done.stderr)
    assert "secret_access_key" in done.stderr and "medvault-test-secret" not in done.stderr
    cli = configured_cli(tmp_path, url, **plain, plaintext_credentials=True)
    no_env_creds = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    cli("init", env=no_env_creds)
    cli("snapshots", env=no_env_creds)


def test_large_objects_go_up_in_parts_and_read_back_by_range(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    data = os.urandom(MULTIPART_THRESHOLD + 5 * 1024 * 1024)
    with open_backend(f"s3://{bucket}/repo") as backend:
        backend.store("data/ab/big", data)
        etag = s3_server.client().head_object(Bucket=bucket, Key="repo/data/ab/big")["ETag"]
        assert etag.strip('"').endswith("-5"), "64 MiB + 5 MiB in 16 MiB parts"
        assert backend.load("data/ab/big") == data
        assert backend.load("data/ab/big", 70_000_000, 1000) == data[70_000_000:70_001_000]
        with pytest.raises(Exception, match="already exists"):
            backend.store("data/ab/big", data)


def test_encryption_storage_class_and_path_style_are_passed_to_the_store(
    s3_server: S3Server, tmp_path: Path, make_tree
) -> None:
    bucket = s3_server.new_bucket()
    cli = configured_cli(
        tmp_path,
        f"s3://{bucket}/repo",
        endpoint=s3_server.endpoint,
        region="us-east-1",
        path_style=True,
        storage_class="STANDARD_IA",
        sse="sse-kms",
        sse_kms_key_id="alias/medvault-backups",
    )
    data = make_tree({"scan.dcm": os.urandom(200_000)})
    cli("init", env={"AWS_ENDPOINT_URL": ""})
    cli("backup", str(data), env={"AWS_ENDPOINT_URL": ""})
    client = s3_server.client()
    packs = client.list_objects_v2(Bucket=bucket, Prefix="repo/data/")["Contents"]
    head = client.head_object(Bucket=bucket, Key=packs[0]["Key"])
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith("alias/medvault-backups")
    assert head["StorageClass"] == "STANDARD_IA"


def _sent_payload_hashes(backend: object) -> list[str]:
    """The X-Amz-Content-SHA256 header of every PutObject the backend's client sends."""
    seen: list[str] = []

    def record(request: object, **_: object) -> None:
        headers = request.headers  # type: ignore[attr-defined]
        seen.append(str(headers.get("X-Amz-Content-SHA256", b""), "ascii"))

    while isinstance(backend, BackendWrapper):  # open_backend wraps the S3 backend
        backend = backend.inner
    backend.client.meta.events.register("before-send.s3.PutObject", record)  # type: ignore[attr-defined]
    return seen


def test_over_tls_bodies_are_not_hashed_into_signatures_over_http_they_are(
    s3_server: S3Server, tmp_path: Path, make_tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(300_000)
    with open_backend(f"s3://{s3_server.new_bucket()}/repo") as plain:
        hashes = _sent_payload_hashes(plain)
        plain.store("data/ab/pack", data)
        assert len(hashes[0]) == 64 and hashes[0] != "UNSIGNED-PAYLOAD", "HTTP: body signed"
    server = S3Server(tls=True)
    try:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        with open_backend(f"s3://{server.new_bucket()}/repo") as secure:
            hashes = _sent_payload_hashes(secure)
            secure.store("data/ab/pack", data)
            assert hashes == ["UNSIGNED-PAYLOAD"], "TLS already authenticates the bytes"
            assert secure.load("data/ab/pack") == data
        # A whole repository over HTTPS, the certificate trusted through AWS_CA_BUNDLE.
        cli = Cli(f"s3://{server.new_bucket()}/repo", tmp_path)
        untrusted = Cli(cli.url, tmp_path)
        del untrusted.env["AWS_CA_BUNDLE"]
        refused = untrusted("init", check=False)
        assert refused.returncode == 5 and one_line(refused.stderr), refused.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr and "AWS_CA_BUNDLE" in refused.stderr
        tree = make_tree({"letters/a.txt": b"x" * 50_000, "scan.dcm": os.urandom(400_000)})
        cli("init")
        cli("backup", str(tree))
        cli("check", "--read-data")
        cli("restore", "latest", "--target", str(tmp_path / "out"))
        assert tree_digest(tmp_path / "out" / str(tree).lstrip("/")) == tree_digest(tree)
    finally:
        server.stop()


def bucket_in_eu_central_1(request: Request) -> Reply:
    """What AWS answers a request signed for us-east-1 when the bucket is in eu-central-1."""
    return Reply(
        400,
        "<Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is "
        "malformed; the region 'us-east-1' is wrong; expecting 'eu-central-1'</Message>"
        "<Region>eu-central-1</Region>",
        {"x-amz-bucket-region": "eu-central-1"},
    )


def test_wal_push_and_fetch_through_s3(s3_server: S3Server, tmp_path: Path) -> None:
    """The PostgreSQL archive commands open S3 repositories too (boto3 is imported lazily)."""
    cli = Cli(f"s3://{s3_server.new_bucket()}/repo", tmp_path)
    cli("init")
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(crafted_segment(segment.name, 7_000_000_000_000_000_001, 16 * 1024 * 1024))
    cli("wal-push", "emr", str(segment))
    cli("wal-fetch", "emr", segment.name, str(tmp_path / "fetched"))
    assert (tmp_path / "fetched").read_bytes() == segment.read_bytes()
    done = cli("wal-fetch", "emr", "000000010000000000000002", str(tmp_path / "x"), check=False)
    assert done.returncode == 1


def test_boto3_is_not_loaded_for_a_local_repository(tmp_path: Path) -> None:
    code = (
        "import sys; from medvault.backends import open_backend; "
        f"open_backend({str(tmp_path / 'r')!r}); print('boto3' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_bucket_in_another_region_is_one_line_naming_both(
    s3_server: S3Server, tmp_path: Path
) -> None:
    cli = Cli(f"s3://{s3_server.new_bucket()}/repo", tmp_path)
    cli("init")
    proxy = FlakyProxy(s3_server.endpoint, bucket_in_eu_central_1)
    try:
        cli.env["AWS_ENDPOINT_URL"] = proxy.endpoint
        # HEAD requests carry no error body (only the region header), GETs carry both.
        answers = [cli(*args, check=False) for args in (("init",), ("snapshots",))]
    finally:
        proxy.close()
    for done in answers:
        assert done.returncode == 5, done.stderr
        line = done.stderr.strip()
        assert "\n" not in line and "Traceback" not in line
        assert "us-east-1" in line and "eu-central-1" in line and "AWS_REGION" in line, line
