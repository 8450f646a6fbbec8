"""A repository in an Azure Blob Storage container, under a name prefix.

Every object is one block blob, written with Put Blob (staged blocks above SINGLE_PUT) and
acknowledged only once durable. New objects are written with `If-None-Match: *`, so two
writers never replace each other's object. On a container with version-level immutability
(immutable storage with versioning), objects carry a locked time-based immutability policy,
Azure's counterpart of S3 Object Lock in COMPLIANCE mode, and legal holds work as on S3; the
store itself then refuses deletes, and this backend refuses overwrites that would hide a
protected version. Elsewhere the immutability verbs raise NotSupported, as on a bucket
without Object Lock.

Credentials, in this order: keys in the repository's section (only with
plaintext_credentials = true), its credential_file, then AZURE_STORAGE_CONNECTION_STRING,
AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY, or AZURE_STORAGE_SAS_TOKEN. The SDK retries
throttling, 5xx and timeouts with backoff; a body cut short after its answer began is
reported as TransientBackendError, for backends/retry.py to ask again. No message ever holds
a key or a SAS token: errors are built from the service's error code, never from the SDK's
text (which can quote a request URL, SAS and all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from medvault.backends.base import Backend, ObjectInfo, is_object_name, validate_name
from medvault.errors import (
    BackendError,
    NotSupported,
    ObjectExists,
    ObjectLocked,
    ObjectNotFound,
    RepositoryExists,
    TransientBackendError,
    UsageError,
)

if TYPE_CHECKING:
    from azure.storage.blob import (
        BlobClient,
        BlobProperties,
        BlobServiceClient,
        ContainerClient,
    )

SINGLE_PUT = 64 * 1024 * 1024  # Put Blob takes up to 5000 MiB; above this, staged blocks
BLOCK = 16 * 1024 * 1024
CONNECTIONS = 32
READ_TIMEOUT = 120.0
LOCK_MODE = "Locked"  # a locked policy can be extended, never shortened or removed
# Objects that coordinate writers rather than hold backups: never locked, always removable.
UNLOCKED_PREFIXES = ("locks/",)
PUBLIC_SUFFIX = "blob.core.windows.net"

# Azure's container naming rules: 3-63 characters, lowercase letters, digits and single
# hyphens, beginning and ending with a letter or digit.
_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class AzureOptions:
    endpoint: str | None = None  # the account's blob endpoint (Azurite, sovereign clouds)
    account: str | None = None
    account_key: str | None = dataclasses.field(default=None, repr=False)
    sas_token: str | None = dataclasses.field(default=None, repr=False)
    credential_file: str | None = None
    read_timeout: float = READ_TIMEOUT


def parse_url(url: str) -> tuple[str, str]:
    """azure://container/prefix -> (container, prefix without slashes at either end)."""
    rest = url[len("azure://") :]
    container, _, prefix = rest.partition("/")
    if not container:
        raise UsageError(f"repository URL {url} names no container: use azure://CONTAINER/PREFIX")
    if not _CONTAINER.match(container):
        raise UsageError(
            f"{url}: {container!r} is not a valid container name: Azure container names are "
            "3-63 characters: lowercase letters, digits and single hyphens, beginning and "
            "ending with a letter or digit"
        )
    return container, prefix.strip("/")


@dataclass(frozen=True)
class _Access:
    """How to reach the account: a connection string, or an endpoint and a credential."""

    connection_string: str | None = dataclasses.field(default=None, repr=False)
    endpoint: str | None = None
    credential: Any = dataclasses.field(default=None, repr=False)


class AzureBackend(Backend):
    concurrency = 16

    def __init__(self, url: str, options: AzureOptions | None = None) -> None:
        self.url = url
        self.container_name, self.prefix = parse_url(url)
        self.options = options or AzureOptions()
        self._client_lock = threading.Lock()
        self._service: BlobServiceClient | None = None
        self._container: ContainerClient | None = None
        self._endpoint: str | None = None
        self._lock_enabled: bool | None = None
        # Requests sent per URL during this thread's current store: more than one means the
        # SDK asked again after an answer was lost (see _holds).
        self._sent = threading.local()

    # -- client ----------------------------------------------------------------------------

    @property
    def container(self) -> ContainerClient:
        if self._container is None:
            with self._client_lock:
                if self._container is None:
                    self._container = self._make_client()
        return self._container

    def _make_client(self) -> ContainerClient:
        import requests
        from azure.core.pipeline.transport import RequestsTransport
        from azure.storage.blob import BlobServiceClient, ExponentialRetry

        access = self._access()
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=CONNECTIONS, pool_maxsize=CONNECTIONS
        )
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        transport = RequestsTransport(
            session=session,
            session_owner=True,
            connection_timeout=10,
            read_timeout=self.options.read_timeout,
        )
        settings: dict[str, Any] = {
            "transport": transport,
            # The SDK's default backoff starts at 15 s: a dead endpoint would hold a command
            # for minutes. 1, 3, 5, 9, 17 and 33 s (with jitter) ride out throttling as well.
            "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=6),
            "max_single_put_size": SINGLE_PUT,
            "max_block_size": BLOCK,
            "raw_request_hook": self._count_request,
        }
        try:
            if access.connection_string is not None:
                service = BlobServiceClient.from_connection_string(
                    access.connection_string, **settings
                )
            else:
                service = BlobServiceClient(access.endpoint or "", access.credential, **settings)
        except Exception:  # a malformed connection string or URL: its text may hold the key
            raise BackendError(
                f"cannot set up Azure access for {self.url}: the endpoint or credentials are "
                "malformed (check the connection string, account name and endpoint)"
            ) from None
        self._endpoint = service.url.split("?", 1)[0].rstrip("/")
        self._service = service  # owns the connections: a container client's close() leaves them
        return service.get_container_client(self.container_name)

    def _access(self) -> _Access:
        from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential

        opts = self.options
        env = os.environ
        account = opts.account or env.get("AZURE_STORAGE_ACCOUNT")
        key, sas = opts.account_key, opts.sas_token
        if key is None and sas is None and opts.credential_file:
            secret = _read_secret(opts.credential_file)
            if "AccountName=" in secret or "BlobEndpoint=" in secret:
                return _Access(connection_string=secret)
            if "sig=" in secret:
                sas = secret
            else:
                key = secret
        if key is None and sas is None:
            if env.get("AZURE_STORAGE_CONNECTION_STRING"):
                return _Access(connection_string=env["AZURE_STORAGE_CONNECTION_STRING"])
            key = env.get("AZURE_STORAGE_KEY") or None
            sas = None if key else env.get("AZURE_STORAGE_SAS_TOKEN") or None
        if key is None and sas is None:
            raise BackendError(
                f"no Azure credentials for {self.url}: set AZURE_STORAGE_CONNECTION_STRING, "
                "AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY, or AZURE_STORAGE_SAS_TOKEN, or "
                "credential_file in the repository's section"
            )
        endpoint = opts.endpoint or (f"https://{account}.{PUBLIC_SUFFIX}" if account else None)
        if endpoint is None:
            raise BackendError(
                f"no Azure storage account for {self.url}: set account (or endpoint) in the "
                "repository's section, or AZURE_STORAGE_ACCOUNT"
            )
        if sas is not None:
            return _Access(endpoint=endpoint, credential=AzureSasCredential(sas.lstrip("?")))
        assert key is not None
        account = account or _account_in(endpoint)
        if not account:
            raise BackendError(
                f"an Azure account key for {self.url} needs the account's name: set account "
                "in the repository's section, or AZURE_STORAGE_ACCOUNT"
            )
        return _Access(endpoint=endpoint, credential=AzureNamedKeyCredential(account, key))

    def _count_request(self, request: Any) -> None:
        sent: Counter[str] | None = getattr(self._sent, "urls", None)
        if sent is not None:
            sent[f"{request.http_request.method} {request.http_request.url}"] += 1

    def _blob(self, name: str) -> BlobClient:
        return self.container.get_blob_client(self._key(name))

    def _key(self, name: str) -> str:
        validate_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _where(self) -> str:
        """The account endpoint in use, without any SAS token."""
        if self._endpoint is not None:
            return self._endpoint
        return self.options.endpoint or "Azure Blob Storage"

    # -- errors ----------------------------------------------------------------------------

    def _error(self, action: str, name: str, exc: Exception) -> BackendError:
        """One line naming the problem and what to do, never a key or SAS token: only the
        service's error code and status are quoted, never the SDK's text."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        target = f"azure://{self.container_name}/{self._key(name) if name else self.prefix}"
        if isinstance(exc, ServiceRequestError):
            return BackendError(
                f"cannot reach the Azure endpoint {self._where()} to {action} {target}: "
                "check the endpoint URL and the network"
            )
        if isinstance(exc, ServiceResponseError):
            return BackendError(
                f"the Azure endpoint {self._where()} did not answer ({action} {target})"
            )
        if isinstance(exc, HttpResponseError):
            status = exc.status_code
            code = self._code(exc) or (f"HTTP {status}" if status else type(exc).__name__)
            if code == "ContainerNotFound":
                return BackendError(
                    f"container {self.container_name} does not exist at {self._where()}: "
                    "create it, or correct the repository URL"
                )
            if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
                return BackendError(
                    f"access denied to {action} {target} ({code}): check the "
                    "credentials, their permissions and the SAS token's expiry"
                )
            return BackendError(f"Azure refused to {action} {target}: {code}")
        return BackendError(f"cannot {action} {target}: {type(exc).__name__}")

    @staticmethod
    def _code(exc: Exception) -> str:
        """The service's error code ("BlobNotFound"); the SDK gives an enum member or text."""
        code = getattr(exc, "error_code", None)
        return str(getattr(code, "value", code) or "")

    # -- the protocol ----------------------------------------------------------------------

    def create(self) -> None:
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

        try:
            try:
                self.container.get_container_properties()
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):  # another writer made it
                    self.container.create_container()
            prefix = f"{self.prefix}/" if self.prefix else None
            found = next(iter(self.container.list_blobs(name_starts_with=prefix)), None)
        except AzureError as exc:
            raise self._error("create a repository at", "", exc) from None
        if found is not None:
            raise RepositoryExists(f"{self.url} already exists and is not empty")

    def exists(self, name: str) -> bool:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        blob = self._blob(name)
        try:
            blob.get_blob_properties()
            return True
        except ResourceNotFoundError as exc:
            if self._code(exc) == "ContainerNotFound":
                raise self._error("look up", name, exc) from None
            return False
        except AzureError as exc:
            raise self._error("look up", name, exc) from None

    def load(
        self, name: str, offset: int = 0, length: int | None = None, *, exact: bool = True
    ) -> bytes:
        from azure.core.exceptions import (
            AzureError,
            HttpResponseError,
            IncompleteReadError,
            ResourceNotFoundError,
            ServiceResponseError,
        )

        blob = self._blob(name)
        try:
            if offset or length is not None:
                data = blob.download_blob(offset=offset, length=length).readall()
            else:
                data = blob.download_blob().readall()
        except ResourceNotFoundError as exc:
            if self._code(exc) == "ContainerNotFound":
                raise self._error("read", name, exc) from None
            raise ObjectNotFound(f"object {name} is missing from {self.url}") from None
        except (ServiceResponseError, IncompleteReadError) as exc:
            # The SDK retries a request until its answer begins, not a body cut short
            # afterwards: backends/retry.py does.
            raise TransientBackendError(str(self._error("read", name, exc))) from None
        except HttpResponseError as exc:
            if exc.status_code == 416 or self._code(exc) == "InvalidRange":
                if not exact:
                    return b""  # the range starts past the end
                raise BackendError(
                    f"object {name} is shorter than expected (nothing at offset {offset})"
                ) from None
            raise self._error("read", name, exc) from None
        except AzureError as exc:
            raise self._error("read", name, exc) from None
        if exact and length is not None and len(data) != length:
            raise BackendError(f"object {name} is shorter than expected ({len(data)} < {length})")
        return data

    def store(
        self,
        name: str,
        data: bytes,
        *,
        overwrite: bool = False,
        retain_until: dt.datetime | None = None,
    ) -> None:
        from azure.core.exceptions import (
            AzureError,
            ResourceExistsError,
            ResourceModifiedError,
        )

        blob = self._blob(name)
        extra: dict[str, Any] = {}
        if retain_until is not None and not name.startswith(UNLOCKED_PREFIXES):
            if not self.lock_enabled:
                raise NotSupported(self._no_object_lock())
            from azure.storage.blob import ImmutabilityPolicy

            extra["immutability_policy"] = ImmutabilityPolicy(
                expiry_time=retain_until, policy_mode=LOCK_MODE
            )
        self._sent.urls = Counter()
        try:
            if overwrite:
                self._refuse_if_locked(name, "overwrite")
            # overwrite=False sends If-None-Match: * (Put Blob, or Put Block List when staged)
            blob.upload_blob(data, overwrite=overwrite, max_concurrency=4, **extra)
        except (ResourceExistsError, ResourceModifiedError) as exc:
            if _immutable_refusal(exc):
                raise ObjectLocked(
                    f"the store refused to overwrite {name}: it is immutable"
                ) from None
            retried = max(self._sent.urls.values(), default=0) > 1
            if retried and self._holds(name, data):
                return  # our own write, retried after its answer was lost
            raise ObjectExists(f"object {name} already exists") from None
        except AzureError as exc:
            if _immutable_refusal(exc):
                raise ObjectLocked(
                    f"the store refused to overwrite {name}: it is immutable"
                ) from None
            raise self._error("write", name, exc) from None
        finally:
            self._sent.urls = None

    def _holds(self, name: str, data: bytes) -> bool:
        """Whether `name` holds exactly `data`. A Put Blob the store carried out but whose
        answer was lost is retried by the SDK, and the retry's `If-None-Match: *` then fails
        on the blob the first attempt wrote. Every object medvault writes is named by its
        content or carries random bytes, so after a retry an identical object there is this
        write, never another writer's."""
        try:
            return self.load(name) == data
        except BackendError:
            return False

    def delete(self, name: str) -> None:
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

        key = self._key(name)
        try:
            self._refuse_if_locked(name, "delete")
            try:
                self.container.delete_blob(key)
            except ResourceNotFoundError as exc:
                if self._code(exc) == "ContainerNotFound":
                    raise
                raise ObjectNotFound(f"object {name} is missing from {self.url}") from None
            if self.lock_enabled:
                # With versioning a delete only turns the current version into a previous
                # one: removing the versions frees the space (and the store enforces each
                # version's policy). A lock rewritten to stay alive has several of them.
                for version in self.container.list_blobs(
                    name_starts_with=key, include=["versions"]
                ):
                    if version.name == key and version.version_id:
                        self.container.delete_blob(key, version_id=version.version_id)
        except HttpResponseError as exc:
            if _immutable_refusal(exc):
                raise ObjectLocked(
                    f"object {name} is under an immutability policy or legal hold; the store "
                    "refused to delete it"
                ) from None
            raise self._error("delete", name, exc) from None
        except AzureError as exc:
            raise self._error("delete", name, exc) from None

    def _properties(self, name: str, action: str) -> BlobProperties:
        """The blob's properties; ObjectNotFound when it is absent."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            return self._blob(name).get_blob_properties()
        except ResourceNotFoundError as exc:
            if self._code(exc) == "ContainerNotFound":
                raise self._error(action, name, exc) from None
            raise ObjectNotFound(f"object {name} is missing from {self.url}") from None
        except AzureError as exc:
            raise self._error(action, name, exc) from None

    def _refuse_if_locked(self, name: str, action: str) -> None:
        """ObjectLocked when `name`'s policy has not run out or it is under legal hold;
        ObjectNotFound when it is absent (nothing, for an overwrite)."""
        try:
            props = self._properties(name, "look up")
        except ObjectNotFound:
            if action == "overwrite":
                return
            raise
        until = _policy_expiry(props)
        if until is not None and until > dt.datetime.now(dt.UTC):
            raise ObjectLocked(
                f"refusing to {action} {name}: it is locked until {until:%Y-%m-%d %H:%M} UTC"
            )
        if props.has_legal_hold:
            raise ObjectLocked(
                f"refusing to {action} {name}: it is under legal hold (a held snapshot needs "
                "it; see `medvault hold list`)"
            )

    def retention(self, name: str) -> dt.datetime | None:
        return _policy_expiry(self._properties(name, "look up"))

    def extend_retention(self, name: str, until: dt.datetime) -> None:
        """Retention only ever grows: a locked policy cannot be shortened."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError
        from azure.storage.blob import ImmutabilityPolicy

        if not self.lock_enabled:
            raise NotSupported(self._no_object_lock())
        current = self.retention(name)
        if current is not None and current >= until:
            return
        try:
            self._blob(name).set_immutability_policy(
                ImmutabilityPolicy(expiry_time=until, policy_mode=LOCK_MODE)
            )
        except ResourceNotFoundError:
            raise ObjectNotFound(f"object {name} is missing from {self.url}") from None
        except AzureError as exc:
            raise self._error("extend the retention of", name, exc) from None

    def set_legal_hold(self, name: str, on: bool) -> None:
        """Applies to the current version, the one medvault reads."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        if not self.lock_enabled:
            raise NotSupported(self._no_legal_holds())
        try:
            self._blob(name).set_legal_hold(on)
        except ResourceNotFoundError:
            raise ObjectNotFound(f"object {name} is missing from {self.url}") from None
        except AzureError as exc:
            action = "place a legal hold on" if on else "lift the legal hold on"
            raise self._error(action, name, exc) from None

    def legal_hold(self, name: str) -> bool:
        if not self.lock_enabled:
            raise NotSupported(self._no_legal_holds())
        return bool(self._properties(name, "read the legal hold of").has_legal_hold)

    def _no_legal_holds(self) -> str:
        return (
            f"{self.url} cannot place legal holds: that needs an Azure container with "
            "version-level immutability (immutable storage with versioning) enabled"
        )

    def _no_object_lock(self) -> str:
        return (
            f"{self.url} cannot lock objects until a date: that needs an Azure container with "
            "version-level immutability (immutable storage with versioning) enabled"
        )

    @property
    def lock_enabled(self) -> bool:
        """Whether the container has version-level immutability on (asked once). Azurite
        answers no: it implements neither versions nor immutability policies."""
        if self._lock_enabled is None:
            from azure.core.exceptions import AzureError

            try:
                props = self.container.get_container_properties()
            except AzureError as exc:
                raise self._error("look up", "", exc) from None
            self._lock_enabled = bool(props.immutable_storage_with_versioning_enabled)
        return self._lock_enabled

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        from azure.core.exceptions import AzureError

        base = self._key(prefix) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for blob in self.container.list_blobs(name_starts_with=base):
                name = blob.name[strip:]
                if is_object_name(name):  # as the local backend: no name load() refuses
                    modified = blob.last_modified.timestamp() if blob.last_modified else None
                    yield ObjectInfo(name, blob.size, modified)
        except AzureError as exc:
            raise self._error("list", prefix, exc) from None

    def close(self) -> None:
        if self._service is not None:
            self._service.close()
            self._service = None
            self._container = None


def _immutable_refusal(exc: Exception) -> bool:
    """Whether the store refused because of an immutability policy or legal hold (409
    BlobImmutableDueToPolicy and its kin)."""
    return "Immutab" in AzureBackend._code(exc)


def _policy_expiry(props: BlobProperties) -> dt.datetime | None:
    policy = props.immutability_policy
    if policy is None or policy.expiry_time is None or policy.policy_mode == "Mutable":
        return None
    until: dt.datetime = policy.expiry_time
    return until if until.tzinfo else until.replace(tzinfo=dt.UTC)


def _account_in(endpoint: str) -> str | None:
    """The account's name in its endpoint: the first label of ACCOUNT.blob.core.windows.net
    (and of sovereign clouds' hosts), or the first path segment of an emulator's
    http://127.0.0.1:10000/ACCOUNT."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ".blob." in host:
        return host.split(".", 1)[0]
    path = parts.path.strip("/")
    return path.split("/", 1)[0] or None


def _read_secret(path: str) -> str:
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise BackendError(
            f"cannot read the Azure credential file {path}: {exc.strerror}"
        ) from None
    if not secret:
        raise BackendError(f"the Azure credential file {path} is empty")
    return secret
