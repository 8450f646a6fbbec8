"""A local Azure Blob Storage emulator for the tests: Azurite's blob service, in its own
process, on 127.0.0.1, holding everything in memory. scripts/bootstrap.sh installs it into
the checkout's .tools/ (or it is found on PATH)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.pgcluster import free_port

# Azurite's well-known development account (public, the same in every installation).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
LOCAL_BIN = Path(__file__).resolve().parent.parent / ".tools" / "node_modules" / ".bin"


def azurite_blob() -> str:
    found = LOCAL_BIN / "azurite-blob"
    if found.exists():
        return str(found)
    on_path = shutil.which("azurite-blob")
    if on_path is None:
        raise RuntimeError("azurite-blob is not installed: run scripts/bootstrap.sh")
    return on_path


class AzuriteServer:
    """Azurite's blob service on 127.0.0.1; `env` holds the connection string that reaches
    it (AZURE_STORAGE_CONNECTION_STRING), `endpoint` the account's blob endpoint."""

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="medvault-azurite-")
        args = [
            azurite_blob(),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--inMemoryPersistence",  # nothing on disk (it refuses --location with this)
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]
        self.endpoint = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.endpoint};"
        )
        self.env = {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}
        self.proc = subprocess.Popen(
            args, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("Azurite did not start") from None
                time.sleep(0.1)

    def new_container(self) -> str:
        from azure.storage.blob import BlobServiceClient

        name = f"t-{uuid.uuid4().hex[:20]}"
        with BlobServiceClient.from_connection_string(self.connection_string) as service:
            service.create_container(name)
        return name

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
