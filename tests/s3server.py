"""A local S3-compatible server for the tests and benchmarks: moto's, in its own process,
on 127.0.0.1, spoken to over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from typing import Any

from tests.pgcluster import free_port


class S3Server:
    """moto's S3 server on 127.0.0.1, in its own process, spoken to over HTTP."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "medvault-test",
            "AWS_SECRET_ACCESS_KEY": "medvault-test-secret",
            "AWS_REGION": "us-east-1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
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
