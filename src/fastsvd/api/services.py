"""Everything the API process talks to, built once from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from fastsvd.settings import Settings
from fastsvd.storage import LocalStorage
from fastsvd.store.db import Database
from fastsvd.store.files import FileStore
from fastsvd.store.jobs import JobStore
from fastsvd.store.keys import KeyStore
from fastsvd.store.migrations import migrate
from fastsvd.store.workers import WorkerRegistry
from fastsvd.wakeup import Waker


@dataclass
class Services:
    """The stores and helpers shared by the API's routes."""

    settings: Settings
    db: Database
    jobs: JobStore
    keys: KeyStore
    files: FileStore
    storage: LocalStorage
    registry: WorkerRegistry
    waker: Waker

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        """Open (and migrate) the database and the file storage ``settings`` name."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.db_url)
        migrate(db)
        return cls(
            settings=settings,
            db=db,
            jobs=JobStore(db, max_attempts=settings.max_attempts),
            keys=KeyStore(db),
            files=FileStore(db),
            storage=LocalStorage(settings.data_dir / "files"),
            registry=WorkerRegistry(db),
            waker=Waker(settings.data_dir / "wake"),
        )
