"""Where file bytes live: a small protocol, and its backends chosen by URL scheme.

    (none)                 the ``files`` folder under the data folder (the embedded default)
    file:///folder         a folder on this machine: ``local.LocalStorage``
    s3://bucket/prefix     any S3-compatible object store shared by many machines: ``s3.S3Storage``

Files are addressed by an unguessable id; their metadata (name, type, size, expiry) is in the
``files`` table (``store.files``), written only after the bytes are stored, so a record always
has its bytes. A local write goes to a temporary name first and is renamed into place; an object
store's PUT is atomic by itself. Either way a crash never leaves half a file under a real id.
A backend turns its library's errors for a store that cannot be reached (or a disk that is full)
into ``StorageUnavailable``, which callers wait out (``fastsvd.retry``).
A new backend is a class with the methods of ``Storage`` and an entry in ``SCHEMES``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fastsvd.errors import FastSVDError
from fastsvd.storage.objects import Download


class Storage(Protocol):
    """What the API and the workers need of a place for file bytes."""

    def put(self, file_id: str, data: bytes, content_type: str = "") -> None:
        """Store ``data`` under ``file_id``, atomically: readers see all of it or nothing."""

    def exists(self, file_id: str) -> bool:
        """Whether ``file_id`` has bytes stored."""

    def read(self, file_id: str) -> bytes:
        """The bytes of ``file_id``."""

    def delete(self, file_id: str) -> None:
        """Remove ``file_id``'s bytes; a missing file is not an error."""

    def local_path(self, file_id: str) -> Path | None:
        """A file on this machine holding the bytes, for the server to send itself (Range
        requests included); None when the bytes live elsewhere."""

    def download(self, file_id: str, range_header: str | None) -> Download | None:
        """The bytes (or the single byte range asked for), streamed; None if missing."""

    def check(self) -> None:
        """Fail now, with the reason, if the storage cannot be reached (``StorageUnavailable``
        when it may come back: an object store that is away, a full disk)."""


@dataclass(frozen=True)
class Options:
    """What a backend may need besides its URL."""

    data_dir: Path
    s3_endpoint_url: str | None = None  # MinIO, R2, Ceph... (not AWS)
    s3_region: str | None = None


def _open_local(url: str, _options: Options) -> Storage:
    from fastsvd.storage.local import LocalStorage

    return LocalStorage(Path(urllib.parse.urlsplit(url).path))


def _open_s3(url: str, options: Options) -> Storage:
    from fastsvd.storage.s3 import S3Storage

    return S3Storage(url, endpoint_url=options.s3_endpoint_url, region=options.s3_region)


# scheme: (how to open it, the URL's form for messages)
SCHEMES: dict[str, tuple[Callable[[str, Options], Storage], str]] = {
    "s3": (_open_s3, "s3://bucket[/prefix]"),
    "file": (_open_local, "file:///folder"),
}


def open_storage(
    url: str | None, data_dir: Path, *, endpoint_url: str | None = None, region: str | None = None
) -> Storage:
    """The storage ``url`` names, by its scheme (``SCHEMES``), or (None) the ``files`` folder
    under ``data_dir``."""
    if url is None:
        from fastsvd.storage.local import LocalStorage

        return LocalStorage(data_dir / "files")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        forms = " or ".join(form for _open, form in SCHEMES.values())
        raise FastSVDError(f"storage URL {url!r}: expected {forms}")
    opener, _form = SCHEMES[scheme]
    return opener(url, Options(data_dir, s3_endpoint_url=endpoint_url, s3_region=region))
