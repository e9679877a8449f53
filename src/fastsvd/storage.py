"""Where file bytes live: a folder on this machine (the embedded default).

Files are addressed by an unguessable id; their metadata (name, type, size, expiry) is in the
``files`` table (``store.files``). Writes go to a temporary name first and are renamed into
place, so a crash never leaves a half-written file under a real id.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class LocalStorage:
    """Files under ``root``, two levels of fan-out by id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        """Where ``file_id`` is (or would be) stored."""
        if not file_id.isalnum():
            raise ValueError("file ids are alphanumeric")
        return self.root / file_id[:2] / file_id

    def put(self, file_id: str, data: bytes) -> None:
        """Store ``data`` under ``file_id`` atomically."""
        target = self.path(file_id)
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
        return self.path(file_id).read_bytes()

    def delete(self, file_id: str) -> None:
        """Remove ``file_id``'s bytes, if any."""
        self.path(file_id).unlink(missing_ok=True)
