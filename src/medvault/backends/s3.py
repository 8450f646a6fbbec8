"""A repository in an S3-compatible bucket, under a key prefix.

Every object is one PUT (multipart above MULTIPART_THRESHOLD), acknowledged by the store only
once durable. New objects are written with `If-None-Match: *`, so two writers never replace
each other's object and an existing object is never silently overwritten. On a bucket with
Object Lock, objects carry a retain-until date in COMPLIANCE mode; the store itself then
refuses deletes, and this backend refuses overwrites that would hide a locked version.

Settings come from the repository's section (endpoint, region, path_style, storage_class,
sse, sse_kms_key_id, profile) and otherwise from the standard AWS environment and credential
chain; botocore retries throttling, 5xx and timeouts with backoff. A body cut short after its
answer began is reported as TransientBackendError, for backends/retry.py to ask again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

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
    from mypy_boto3_s3.client import S3Client

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_PART = 16 * 1024 * 1024
CONNECTIONS = 32
READ_TIMEOUT = 120.0
LOCK_MODE = "COMPLIANCE"
# Objects that coordinate writers rather than hold backups: never locked, always removable.
UNLOCKED_PREFIXES = ("locks/",)


@dataclass(frozen=True)
class S3Options:
    endpoint: str | None = None
    region: str | None = None
    path_style: bool | None = None
    storage_class: str | None = None
    sse: str | None = None  # "AES256" (SSE-S3) or "aws:kms" (SSE-KMS)
    sse_kms_key_id: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    read_timeout: float = READ_TIMEOUT  # seconds without an answer before a request is retried


# S3's bucket naming rules, and the relaxed ones of older buckets and of stores such as Ceph
# (rgw_relaxed_s3_bucket_names), which only path-style addressing can reach.
_STRICT_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_RELAXED_BUCKET = re.compile(r"^[A-Za-z0-9._-]{1,255}$")


def check_bucket_name(url: str, bucket: str, *, relaxed: bool) -> None:
    """Refuse, before any request, a bucket name the store would refuse with a page of
    library output. `relaxed` (an endpoint other than AWS, or path-style addressing) allows
    the wider set some stores accept."""
    if _STRICT_BUCKET.match(bucket) and ".." not in bucket and not _is_ip(bucket):
        return
    if relaxed and _RELAXED_BUCKET.match(bucket):
        return
    rules = (
        "S3 bucket names are 3-63 characters: lowercase letters, digits, dots and hyphens, "
        "beginning and ending with a letter or digit"
    )
    if not relaxed and _RELAXED_BUCKET.match(bucket):
        rules += " (a store that allows more, such as Ceph, needs its endpoint and path_style)"
    raise UsageError(f"{url}: {bucket!r} is not a valid bucket name: {rules}")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def parse_url(url: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without slashes at either end)."""
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(f"repository URL {url} names no bucket: use s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


class S3Backend(Backend):
    concurrency = 16

    def __init__(self, url: str, options: S3Options | None = None) -> None:
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.options = options or S3Options()
        endpoint = (
            self.options.endpoint
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        check_bucket_name(url, self.bucket, relaxed=bool(endpoint or self.options.path_style))
        self._client_lock = threading.Lock()
        self._s3: S3Client | None = None
        self._lock_enabled: bool | None = None
        self._conditional_put = True

    # -- client ----------------------------------------------------------------------------

    @property
    def client(self) -> S3Client:
        if self._s3 is None:
            with self._client_lock:
                if self._s3 is None:
                    self._s3 = self._make_client()
        return self._s3

    def _make_client(self, sign_payloads: bool | None = None) -> S3Client:
        import boto3
        from botocore.config import Config

        opts = self.options
        addressing: Literal["auto", "virtual", "path"] = (
            "auto" if opts.path_style is None else "path" if opts.path_style else "virtual"
        )
        if sign_payloads is None:
            endpoint = (
                opts.endpoint
                or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL")
            )
            sign_payloads = endpoint is not None and not endpoint.startswith("https://")
        config = Config(
            retries={"max_attempts": 8, "mode": "adaptive"},
            connect_timeout=10,
            read_timeout=opts.read_timeout,
            max_pool_connections=CONNECTIONS,
            tcp_keepalive=True,
            # A SHA-256 of every body in the signature: over TLS it adds nothing (TLS already
            # authenticates the bytes in transit, and medvault authenticates every object it
            # reads), and it costs ~0.6 s of CPU per GB uploaded. Over plain HTTP it is the
            # only check the store makes of what arrived, so it stays.
            s3={"addressing_style": addressing, "payload_signing_enabled": sign_payloads},
            # Every object medvault stores is named by the BLAKE3 of its bytes or sealed with
            # AES-GCM, and checked on every read: a CRC32 pass over each body on the way up
            # and down would only cost CPU. Where S3 insists (Object Lock), one is sent.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            session = boto3.session.Session(
                profile_name=opts.profile,
                aws_access_key_id=opts.access_key_id,
                aws_secret_access_key=opts.secret_access_key,
                region_name=opts.region,
            )
            client = session.client("s3", endpoint_url=opts.endpoint, config=config)
        except Exception as exc:  # botocore's ProfileNotFound, bad endpoint and the like
            raise BackendError(f"cannot set up S3 access for {self.url}: {exc}") from None
        plain_http = not str(client.meta.endpoint_url).startswith("https://")
        if plain_http and not sign_payloads:
            # The endpoint came from somewhere not looked at above (a profile's endpoint_url).
            return self._make_client(sign_payloads=True)
        return client

    def _key(self, name: str) -> str:
        validate_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _where(self) -> str:
        """The endpoint in use, wherever it came from (settings, AWS_ENDPOINT_URL, AWS)."""
        if self._s3 is not None:
            return str(self._s3.meta.endpoint_url)
        return self.options.endpoint or "AWS S3"

    # -- errors ----------------------------------------------------------------------------

    def _error(self, action: str, name: str, exc: Exception) -> BackendError:
        """One line naming the problem and what to do, never the credentials."""
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
            SSLError,
        )

        target = f"s3://{self.bucket}/{self._key(name) if name else self.prefix}"
        if isinstance(exc, SSLError):
            hint = ""
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                hint = (
                    "; if the store's certificate comes from a private CA, point AWS_CA_BUNDLE "
                    "(or ca_bundle in the AWS profile) at that CA's certificate"
                )
            reason = str(exc.kwargs.get("error", exc))
            return BackendError(
                f"TLS to the S3 endpoint {self._where()} failed ({action} {target}): {reason}{hint}"
            )
        if isinstance(exc, NoCredentialsError):
            return BackendError(
                f"no S3 credentials for {self.url}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where an instance role applies"
            )
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
            return BackendError(
                f"cannot reach the S3 endpoint {self._where()} to {action} {target}: "
                "check the endpoint URL and the network"
            )
        if isinstance(exc, ReadTimeoutError):
            return BackendError(f"the S3 endpoint {self._where()} timed out ({action} {target})")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return BackendError(
                    f"bucket {self.bucket} does not exist at {self._where()}: "
                    "create it, or correct the repository URL"
                )
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            # A HEAD gets no error body: then only the header names the bucket's region.
            region = exc.response.get("Error", {}).get("Region") or headers.get(
                "x-amz-bucket-region"
            )
            if (
                code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301")
                or status == 301
                or (status == 400 and region and region != self._region())
            ):
                hint = f"it is in {region}" if region else "it is in another region"
                return BackendError(
                    f"bucket {self.bucket} is not in region {self._region()}: {hint}; "
                    "set region in the repository's section or AWS_REGION"
                )
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch") or (
                status == 403
            ):
                return BackendError(
                    f"access denied to {action} {target} ({code or 403}): check the credentials "
                    "and the bucket policy"
                )
            message = exc.response.get("Error", {}).get("Message") or code
            return BackendError(f"S3 refused to {action} {target}: {message} ({code})")
        return BackendError(f"cannot {action} {target}: {exc}")

    def _region(self) -> str:
        return self.options.region or self.client.meta.region_name or "us-east-1"

    @staticmethod
    def _code(exc: Exception) -> str:
        response: dict[str, Any] = getattr(exc, "response", {}) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code or str(status or "")

    # -- the protocol ----------------------------------------------------------------------

    def create(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if self._code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                self._create_bucket()
            found = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "", MaxKeys=1
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._error("create a repository at", "", exc) from None
        if found.get("KeyCount", 0):
            raise RepositoryExists(f"{self.url} already exists and is not empty")

    def _create_bucket(self) -> None:
        region = self._region()
        if region == "us-east-1":
            self.client.create_bucket(Bucket=self.bucket)
        else:
            self.client.create_bucket(
                Bucket=self.bucket,
                CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
            )

    def exists(self, name: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(name))
            return True
        except ClientError as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error("look up", name, exc) from None
        except BotoCoreError as exc:
            raise self._error("look up", name, exc) from None

    def load(
        self, name: str, offset: int = 0, length: int | None = None, *, exact: bool = True
    ) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name)}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        try:
            body = self.client.get_object(**kwargs)["Body"]
        except ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(f"object {name} is missing from {self.url}") from None
            if not exact and self._code(exc) in ("InvalidRange", "416"):
                return b""  # the range starts past the end
            raise self._error("read", name, exc) from None
        except BotoCoreError as exc:
            raise self._error("read", name, exc) from None
        try:
            data = body.read()
        except BotoCoreError as exc:
            # botocore retries a request until its answer begins, not a body cut short
            # afterwards (a reset connection, a proxy's timeout): backends/retry.py does.
            body.close()
            raise TransientBackendError(str(self._error("read", name, exc))) from None
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
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(name)
        extra: dict[str, Any] = {}
        if self.options.storage_class and not name.startswith(UNLOCKED_PREFIXES):
            extra["StorageClass"] = self.options.storage_class
        if self.options.sse:
            extra["ServerSideEncryption"] = self.options.sse
            if self.options.sse_kms_key_id:
                extra["SSEKMSKeyId"] = self.options.sse_kms_key_id
        if retain_until is not None and not name.startswith(UNLOCKED_PREFIXES):
            if not self.lock_enabled:
                raise NotSupported(self._no_object_lock())
            extra["ObjectLockMode"] = LOCK_MODE
            extra["ObjectLockRetainUntilDate"] = retain_until
            extra["ChecksumAlgorithm"] = "CRC32"  # S3 requires one with lock parameters
        try:
            if overwrite:
                self._refuse_if_locked(name, "overwrite")
            elif not self._conditional_put and self.exists(name):
                raise ObjectExists(f"object {name} already exists")
            conditional = not overwrite and self._conditional_put
            if len(data) > MULTIPART_THRESHOLD:
                self._put_multipart(key, data, extra, conditional)
            else:
                if conditional:
                    extra["IfNoneMatch"] = "*"
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except ClientError as exc:
            code = self._code(exc)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
                if retried and self._holds(name, data):
                    return  # our own write, retried after its answer was lost
                raise ObjectExists(f"object {name} already exists") from None
            if code in ("NotImplemented", "501") and self._conditional_put:
                # A store without conditional writes: look first, then write.
                self._conditional_put = False
                self.store(name, data, overwrite=overwrite, retain_until=retain_until)
                return
            raise self._error("write", name, exc) from None
        except BotoCoreError as exc:
            raise self._error("write", name, exc) from None

    def _holds(self, name: str, data: bytes) -> bool:
        """Whether `name` holds exactly `data`. A PUT the store carried out but whose answer
        was lost (a 500 or a timeout after the write) is retried by botocore, and the retry's
        `If-None-Match: *` then fails on the object the first attempt wrote. Every object
        medvault writes is named by its content or carries random bytes, so after a retry an
        identical object there is this write, never another writer's."""
        try:
            return self.load(name) == data
        except BackendError:
            return False

    def _put_multipart(
        self, key: str, data: bytes, extra: dict[str, Any], conditional: bool
    ) -> None:
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
        upload_id = upload["UploadId"]
        view = memoryview(data)
        offsets = range(0, len(data), MULTIPART_PART)

        def send(number: int, start: int) -> dict[str, Any]:
            part = self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=bytes(view[start : start + MULTIPART_PART]),
            )
            done: dict[str, Any] = {"PartNumber": number, "ETag": part["ETag"]}
            for field in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256"):
                if field in part:
                    done[field] = part[field]
            return done

        try:
            with ThreadPoolExecutor(4, "medvault-s3-part") as pool:
                parts = list(pool.map(send, range(1, len(offsets) + 1), offsets))
            complete: dict[str, Any] = {"IfNoneMatch": "*"} if conditional else {}
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                **complete,
            )
        except BaseException:
            from botocore.exceptions import BotoCoreError, ClientError

            # If this fails too, the bucket's lifecycle rule for incomplete uploads collects it.
            with contextlib.suppress(BotoCoreError, ClientError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def delete(self, name: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(name)
        try:
            version = self._refuse_if_locked(name, "delete")
            if version is None:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            # On a versioned bucket a plain delete only hides the object behind a marker;
            # removing the version frees the space (and the store enforces the lock). An
            # object written more than once (a lock rewritten to stay alive) has older
            # versions, and the newest of them becomes current again when the current one
            # goes: they go too, each after its own lock is checked.
            while version is not None:
                self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version)
                version = self._refuse_if_locked(name, "delete", absent_ok=True)
        except ClientError as exc:
            if self._code(exc) == "AccessDenied" and self.lock_enabled:
                raise ObjectLocked(
                    f"object {name} is under Object Lock retention; the store refused to delete it"
                ) from None
            raise self._error("delete", name, exc) from None
        except BotoCoreError as exc:
            raise self._error("delete", name, exc) from None

    def _refuse_if_locked(self, name: str, action: str, *, absent_ok: bool = False) -> str | None:
        """The current version id of `name` (None on an unversioned bucket); ObjectLocked
        when its retention has not run out; ObjectNotFound when it is absent (None with
        `absent_ok`)."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                if action == "overwrite" or absent_ok:
                    return None
                raise ObjectNotFound(f"object {name} is missing from {self.url}") from None
            raise
        until = head.get("ObjectLockRetainUntilDate")
        if until is not None and until > dt.datetime.now(dt.UTC):
            raise ObjectLocked(
                f"refusing to {action} {name}: it is locked until {until:%Y-%m-%d %H:%M} UTC"
            )
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            raise ObjectLocked(
                f"refusing to {action} {name}: it is under legal hold (a held snapshot needs "
                "it; see `medvault hold list`)"
            )
        return head.get("VersionId")

    def retention(self, name: str) -> dt.datetime | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise ObjectNotFound(f"object {name} is missing from {self.url}") from None
            raise self._error("look up", name, exc) from None
        except BotoCoreError as exc:
            raise self._error("look up", name, exc) from None
        return head.get("ObjectLockRetainUntilDate")

    def extend_retention(self, name: str, until: dt.datetime) -> None:
        """Retention only ever grows: COMPLIANCE mode forbids shortening it."""
        from botocore.exceptions import BotoCoreError, ClientError

        if not self.lock_enabled:
            raise NotSupported(self._no_object_lock())
        try:
            self.client.put_object_retention(
                Bucket=self.bucket,
                Key=self._key(name),
                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until},
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._error("extend the retention of", name, exc) from None

    def set_legal_hold(self, name: str, on: bool) -> None:
        """Applies to the current version, the one medvault reads."""
        from botocore.exceptions import BotoCoreError, ClientError

        if not self.lock_enabled:
            raise NotSupported(self._no_legal_holds())
        try:
            self.client.put_object_legal_hold(
                Bucket=self.bucket, Key=self._key(name), LegalHold={"Status": "ON" if on else "OFF"}
            )
        except ClientError as exc:
            # Some stores answer a missing object with another error (moto with a 500).
            if self._code(exc) in ("404", "NoSuchKey", "NotFound") or not self.exists(name):
                raise ObjectNotFound(f"object {name} is missing from {self.url}") from None
            action = "place a legal hold on" if on else "lift the legal hold on"
            raise self._error(action, name, exc) from None
        except BotoCoreError as exc:
            raise self._error("set the legal hold of", name, exc) from None

    def legal_hold(self, name: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        if not self.lock_enabled:
            raise NotSupported(self._no_legal_holds())
        try:
            found = self.client.get_object_legal_hold(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            code = self._code(exc)
            if code == "NoSuchObjectLockConfiguration":  # never held
                return False
            if code in ("404", "NoSuchKey", "NotFound"):
                raise ObjectNotFound(f"object {name} is missing from {self.url}") from None
            raise self._error("read the legal hold of", name, exc) from None
        except BotoCoreError as exc:
            raise self._error("read the legal hold of", name, exc) from None
        return found.get("LegalHold", {}).get("Status") == "ON"

    @property
    def lock_enabled(self) -> bool:
        """Whether the bucket has Object Lock on (asked once)."""
        if self._lock_enabled is None:
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
                enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
                self._lock_enabled = enabled == "Enabled"
            except ClientError as exc:
                if self._code(exc) in ("NoSuchBucket",):
                    raise self._error("look up", "", exc) from None
                self._lock_enabled = False  # ObjectLockConfigurationNotFoundError and kin
            except BotoCoreError as exc:
                raise self._error("look up", "", exc) from None
        return self._lock_enabled

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        base = self._key(prefix) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][strip:]
                    if is_object_name(name):  # as the local backend: no name load() refuses
                        yield ObjectInfo(name, obj["Size"], obj["LastModified"].timestamp())
        except (BotoCoreError, ClientError) as exc:
            raise self._error("list", prefix, exc) from None

    def close(self) -> None:
        if self._s3 is not None:
            self._s3.close()
            self._s3 = None
