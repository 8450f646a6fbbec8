"""Storage backends, built from a URL."""

from __future__ import annotations

from medvault.backends.base import Backend, ObjectInfo
from medvault.errors import UsageError


def open_backend(url: str) -> Backend:
    """A local path or file:// URL today; other schemes arrive with their backends."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise UsageError(f"repository URL scheme {scheme}:// is not supported yet")
    from medvault.backends.local import LocalBackend

    return LocalBackend(url)


__all__ = ["Backend", "ObjectInfo", "open_backend"]
