"""File bytes in a folder on this machine, two levels of fan-out by id."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastsvd.errors import StorageUnavailable
from fastsvd.storage.objects import CHUNK_BYTES, Download, check_id

# Errors of the disk rather than of the call: waited out like an object store that is away.
UNAVAILABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}


class LocalStorage:
    """Files under ``root``, two levels of fan-out by id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        """Where ``file_id`` is (or would be) stored."""
        check_id(file_id)
        return self.root / file_id[:2] / file_id

    def put(self, file_id: str, data: bytes, content_type: str = "") -> None:
        """Store ``data`` under ``file_id`` atomically."""
        target = self.path(file_id)
        with self.reachable():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, target)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise

    def exists(self, file_id: str) -> bool:
        """Whether ``file_id`` has bytes stored."""
        return self.path(file_id).is_file()

    def read(self, file_id: str) -> bytes:
        """The bytes of ``file_id``."""
        with self.reachable():
            return self.path(file_id).read_bytes()

    def delete(self, file_id: str) -> None:
        """Remove ``file_id``'s bytes, if any."""
        self.path(file_id).unlink(missing_ok=True)

    def local_path(self, file_id: str) -> Path | None:
        """The file itself: the server sends it (and answers Range requests) directly."""
        return self.path(file_id)

    def download(self, file_id: str, range_header: str | None) -> Download | None:
        """The whole file, in chunks (``local_path`` is the way to serve ranges)."""
        path = self.path(file_id)
        if not path.is_file():
            return None
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as source:
                while chunk := source.read(CHUNK_BYTES):
                    yield chunk

        return Download(200, chunks(), {"content-length": str(size)})

    def check(self) -> None:
        """A folder is always there (it is made at start); fails while its disk is full."""
        with self.reachable():
            fd, temp = tempfile.mkstemp(dir=self.root, prefix=".check-")
            try:
                os.write(fd, b"x")
            finally:
                os.close(fd)
                os.unlink(temp)

    @contextmanager
    def reachable(self) -> Iterator[None]:
        """The storage's boundary: a full or failing disk becomes ``StorageUnavailable``."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in UNAVAILABLE_ERRNOS:
                raise
            reason = "its disk is full" if exc.errno == errno.ENOSPC else exc.strerror
            message = f"the file storage {self.root} is unavailable: {reason}"
            raise StorageUnavailable(message) from exc
