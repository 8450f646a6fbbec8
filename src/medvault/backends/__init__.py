"""Storage backends, built from a URL and the repository's settings."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from medvault.backends.base import Backend, ObjectInfo
from medvault.errors import MissingPackage, UsageError

if TYPE_CHECKING:
    from medvault.config import RepositorySettings


def open_backend(url: str, settings: RepositorySettings | None = None) -> Backend:
    """A local path, file:// URL, s3://bucket/prefix or azure://container/prefix. A remote
    store comes wrapped: reads cut short are asked again (retry.py), and ranged reads go
    through windows of their object (windows.py), since there every request costs a round
    trip."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    if url.startswith("s3://"):
        _require_package("boto3", "botocore", purpose="an s3:// repository", install="boto3")
        from medvault.backends.retry import RetryingBackend
        from medvault.backends.s3 import S3Backend, S3Options
        from medvault.backends.windows import WindowedBackend

        options = S3Options()
        if settings is not None:
            options = S3Options(
                endpoint=settings.endpoint,
                region=settings.region,
                path_style=settings.path_style,
                storage_class=settings.storage_class,
                sse={"sse-s3": "AES256", "sse-kms": "aws:kms", None: None}[settings.sse],
                sse_kms_key_id=settings.sse_kms_key_id,
                profile=settings.profile,
                access_key_id=settings.access_key_id,
                secret_access_key=settings.secret_access_key,
            )
            if settings.read_timeout_s is not None:
                options = replace(options, read_timeout=settings.read_timeout_s)
        return WindowedBackend(RetryingBackend(S3Backend(url, options)))
    if url.startswith("azure://"):
        return _open_azure(url, settings)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise UsageError(
            f"repository URL scheme {scheme}:// is not supported (use a path, s3:// or azure://)"
        )
    from medvault.backends.local import LocalBackend

    return LocalBackend(url, append_only=settings.append_only if settings else False)


def _open_azure(url: str, settings: RepositorySettings | None) -> Backend:
    _require_package(
        "azure.storage.blob",
        purpose="an azure:// repository",
        install="azure-storage-blob",
    )
    from medvault.backends.azure import AzureBackend, AzureOptions
    from medvault.backends.retry import RetryingBackend
    from medvault.backends.windows import WindowedBackend

    options = AzureOptions()
    if settings is not None:
        options = AzureOptions(
            endpoint=settings.endpoint,
            account=settings.account,
            account_key=settings.account_key,
            sas_token=settings.sas_token,
            credential_file=settings.credential_file,
        )
        if settings.read_timeout_s is not None:
            options = replace(options, read_timeout=settings.read_timeout_s)
    return WindowedBackend(RetryingBackend(AzureBackend(url, options)))


def _require_package(*modules: str, purpose: str, install: str) -> None:
    """An optional SDK is imported only where it is used (boto3 would cost every wal-push of a
    local repository); its absence is said here, before anything else is tried, as
    Barman's factories do, rather than as an ImportError deep inside the first request."""
    import importlib.util

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing; a module blocked
            found = False
        if not found:
            raise MissingPackage(
                f"{purpose} needs the Python package {module}, which is not installed: "
                f"install it into medvault's environment (pip install {install})"
            )


__all__ = ["Backend", "ObjectInfo", "open_backend"]
