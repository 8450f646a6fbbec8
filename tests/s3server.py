"""A local S3-compatible server for the tests and benchmarks: moto's, in its own process,
on 127.0.0.1, spoken to over HTTP, or HTTPS with a certificate made for the run."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from tests.pgcluster import free_port


class S3Server:
    """moto's S3 server on 127.0.0.1, in its own process, spoken to over HTTP (with `tls`,
    HTTPS; `env` then names the certificate in AWS_CA_BUNDLE)."""

    def __init__(self, *, tls: bool = False) -> None:
        self.port = free_port()
        self.certdir: str | None = None
        args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        scheme = "http"
        self.env = {
            "AWS_ACCESS_KEY_ID": "medvault-test",
            "AWS_SECRET_ACCESS_KEY": "medvault-test-secret",
            "AWS_REGION": "us-east-1",
        }
        if tls:
            self.certdir = tempfile.mkdtemp(prefix="medvault-s3-tls-")
            cert, key = _self_signed(self.certdir)
            args += ["-c", cert, "-k", key]
            scheme = "https"
            self.env["AWS_CA_BUNDLE"] = cert
        self.endpoint = f"{scheme}://127.0.0.1:{self.port}"
        self.env["AWS_ENDPOINT_URL"] = self.endpoint
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the local S3 server did not start") from None
                time.sleep(0.1)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            verify=self.env.get("AWS_CA_BUNDLE"),
            region_name="us-east-1",
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def new_bucket(self, *, object_lock: bool = False) -> str:
        bucket = f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=object_lock)
        return bucket

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.certdir is not None:
            shutil.rmtree(self.certdir, ignore_errors=True)


def _self_signed(directory: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1, valid for a day, and its key (PEM files)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = f"{directory}/cert.pem", f"{directory}/key.pem"
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path
