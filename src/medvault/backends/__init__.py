"""Storage backends, built from a URL and the repository's settings."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from medvault.backends.base import Backend, ObjectInfo
from medvault.errors import UsageError

if TYPE_CHECKING:
    from medvault.config import RepositorySettings


def open_backend(url: str, settings: RepositorySettings | None = None) -> Backend:
    """A local path, file:// URL or s3://bucket/prefix."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    if url.startswith("s3://"):
        from medvault.backends.s3 import S3Backend, S3Options

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
        return S3Backend(url, options)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise UsageError(
            f"repository URL scheme {scheme}:// is not supported (use a path or s3://)"
        )
    from medvault.backends.local import LocalBackend

    return LocalBackend(url, append_only=settings.append_only if settings else False)


__all__ = ["Backend", "ObjectInfo", "open_backend"]
