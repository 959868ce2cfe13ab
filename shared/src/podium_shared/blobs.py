"""Where bodies too large for a Kafka record are kept: a content-addressed store
of bytes, referenced from the record by URL (a claim check).

Only a local folder is supported (``file://`` URLs, the default
``$PODIUM_HOME/blobs``): every process of one machine sees it. Services on
several machines need a shared folder (NFS) until an S3-compatible store exists;
an ``s3://`` URL is refused at start-up rather than silently kept local.

A blob is written under its SHA-256, with a rename so a reader never sees half
a file; writing the same bytes twice (a redelivered message) writes one file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Keep these bytes; return the URL that reads them back."""
        ...


class BlobError(Exception):
    """A blob URL this process cannot read, or a store it cannot use."""


class FolderStore:
    """Blobs as files under ``root``, named by their SHA-256."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / digest[:2] / digest
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return path.as_uri()


def open_store(url: str) -> FolderStore:
    """The store a URL names: a ``file://`` URL or a plain path."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return FolderStore(Path(unquote(parsed.path) if parsed.scheme else url).resolve())
    raise BlobError(
        f"blob store {url!r}: only a local folder (file://...) is supported; "
        "mount shared storage there for services on several machines"
    )


def read(url: str) -> bytes:
    """The bytes behind a blob URL."""
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise BlobError(f"cannot read blob {url!r}: only file:// URLs are supported")
    path = Path(unquote(parsed.path))
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BlobError(f"cannot read blob {url!r}: {exc}") from exc


_current: BlobStore | None = None


def configure(store: BlobStore) -> None:
    """Set the store this process writes to (the runtime does, from settings)."""
    global _current
    _current = store


def current() -> BlobStore:
    """The configured store; unconfigured, ``.podium/blobs`` like the default home."""
    return _current or FolderStore(Path(".podium/blobs").resolve())
