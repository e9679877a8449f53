"""Everything a fastsvd process talks to (the API, a worker, the CLI), built once from the
settings."""

from __future__ import annotations

from dataclasses import dataclass

from fastsvd import constants as c
from fastsvd.periodic import Every
from fastsvd.retry import until_available
from fastsvd.settings import Settings
from fastsvd.storage import Storage, open_storage
from fastsvd.store.db import Database, statement_timeout_s
from fastsvd.store.files import FileStore
from fastsvd.store.jobs import JobStore
from fastsvd.store.keys import KeyStore
from fastsvd.store.migrations import migrate
from fastsvd.store.signing import SigningKeyStore
from fastsvd.store.workers import WorkerRoster
from fastsvd.wakeup import (
    IdleMark,
    Listener,
    NotifyWaker,
    PostgresListener,
    Waker,
    WakeupListener,
)


@dataclass
class Services:
    """The stores and helpers shared by the routes, the workers and the commands."""

    settings: Settings
    db: Database
    jobs: JobStore
    keys: KeyStore
    files: FileStore
    storage: Storage
    roster: WorkerRoster
    waker: Waker | NotifyWaker
    signing_keys: SigningKeyStore  # the Ed25519 keys of fal-style webhooks
    # The reaping round (``JobStore.requeue_abandoned``): one a period for all the workers of
    # this process, whichever asks first.
    reaping: Every

    @classmethod
    def from_settings(cls, settings: Settings, *, wait: bool = False) -> Services:
        """Open (and migrate) the database and the file storage ``settings`` name.

        A wrong bucket or credentials raise ``FastSVDError`` at once. A database or object store
        that is down raises ``Unavailable``, or with ``wait`` (a long-running process: the server,
        a worker, the webhook deliverer) is waited for, logged once, like any other outage.
        """
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        storage = open_storage(
            settings.storage_url,
            settings.data_dir,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
        db = Database(
            settings.db_url,
            pool_size=settings.db_pool_size,
            statement_timeout_s=statement_timeout_s(settings.lease_s),
        )
        for step in (storage.check, lambda: migrate(db)):  # say what is wrong at start
            if wait:
                until_available(step)
            else:
                step()
        return cls(
            settings=settings,
            db=db,
            jobs=JobStore(
                db,
                max_attempts=settings.max_attempts,
                max_queued=settings.max_queued,
                max_active_per_key=settings.max_active_per_key,
                submits_per_minute=settings.submits_per_minute or None,
                serving_window_s=settings.serving_window_s,
            ),
            keys=KeyStore(db),
            files=FileStore(db),
            storage=storage,
            roster=WorkerRoster(db),
            waker=NotifyWaker() if db.is_postgres else Waker(settings.data_dir / "wake"),
            signing_keys=SigningKeyStore(db),
            reaping=Every(min(c.REAP_EVERY_S, settings.lease_s / c.REAPS_PER_LEASE)),
        )

    def close(self) -> None:
        """Let go of the database connections and the wake-up socket."""
        self.waker.close()
        self.db.dispose()

    def open_listener(self, name: str) -> Listener:
        """A worker's end of the wake-ups and cancels, for this database."""
        if self.db.is_postgres:
            return PostgresListener(self.db.url, IdleMark(name, self.db, self.roster))
        return WakeupListener(self.settings.data_dir / "wake", name)
