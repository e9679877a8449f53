"""File records: uploads and outputs, their names, types, sizes and expiry."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Row, delete, insert, select, update

from fastsvd.store.db import Database
from fastsvd.store.tables import files


@dataclass(frozen=True)
class FileRecord:
    """A stored file's metadata."""

    id: str
    key_id: str
    kind: str
    file_name: str
    content_type: str
    size: int
    created_at: float
    expires_at: float | None
    upload_token: str | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> FileRecord:
        return cls(
            row.id,
            row.key_id,
            row.kind,
            row.file_name,
            row.content_type,
            row.size,
            row.created_at,
            row.expires_at,
            row.upload_token,
        )

    @property
    def path(self) -> str:
        """The URL path the API serves this file at."""
        return f"/files/{self.id}/{self.file_name}"


def new_file_id() -> str:
    """An unguessable id: the file URL is the capability to read it."""
    return secrets.token_hex(16)


def new_record(
    *,
    key_id: str,
    kind: str,
    file_name: str,
    content_type: str,
    size: int,
    retention_s: float | None,
    file_id: str | None = None,
    upload_token: str | None = None,
) -> FileRecord:
    """A file's record, not yet written: ``FileStore.add`` writes it, or ``JobStore.complete``
    with the result it belongs to."""
    now = time.time()
    return FileRecord(
        id=file_id or new_file_id(),
        key_id=key_id,
        kind=kind,
        file_name=file_name,
        content_type=content_type,
        size=size,
        created_at=now,
        expires_at=now + retention_s if retention_s is not None else None,
        upload_token=upload_token,
    )


class FileStore:
    """Creates, finds and expires file records."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, record: FileRecord) -> FileRecord:
        """Write a record made by ``new_record`` (its bytes are stored by the caller)."""
        with self.db.write() as conn:
            conn.execute(insert(files).values(**asdict(record)))
        return record

    def get(self, file_id: str) -> FileRecord | None:
        """The record, unless missing or expired."""
        with self.db.read() as conn:
            row = conn.execute(select(files).where(files.c.id == file_id)).first()
        if row is None or (row.expires_at is not None and row.expires_at < time.time()):
            return None
        return FileRecord.from_row(row)

    def uploaded(self, file_id: str, size: int) -> None:
        """Mark an initiated upload as received."""
        with self.db.write() as conn:
            conn.execute(
                update(files).where(files.c.id == file_id).values(size=size, upload_token=None)
            )

    def take_expired(self, now: float | None = None, limit: int = 500) -> list[str]:
        """Remove up to ``limit`` expired records; returns their ids (to delete the bytes)."""
        now = time.time() if now is None else now
        with self.db.write() as conn:
            ids = list(
                conn.scalars(
                    select(files.c.id)
                    .where(files.c.expires_at < now)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                ).all()
            )
            if ids:
                conn.execute(delete(files).where(files.c.id.in_(ids)))
        return ids
