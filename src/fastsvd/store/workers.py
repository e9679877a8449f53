"""Worker registry: who is alive, and whether any has its models loaded (``/ready``)."""

from __future__ import annotations

import os
import socket
import time

from sqlalchemy import delete, func, insert, select, update

from fastsvd.store.db import Database
from fastsvd.store.tables import workers


class WorkerRegistry:
    """Heartbeats of worker processes."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, name: str) -> None:
        """A worker starts (models not loaded yet)."""
        now = time.time()
        with self.db.write() as conn:
            conn.execute(delete(workers).where(workers.c.name == name))
            conn.execute(
                insert(workers).values(
                    name=name,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=now,
                    seen_at=now,
                )
            )

    def beat(self, name: str, *, ready: bool = False) -> None:
        """The worker is alive (and, with ``ready``, has its models loaded)."""
        now = time.time()
        values: dict[str, float] = {"seen_at": now}
        if ready:
            values["ready_at"] = now
        with self.db.write() as conn:
            conn.execute(update(workers).where(workers.c.name == name).values(**values))

    def leave(self, name: str) -> None:
        """The worker stops."""
        with self.db.write() as conn:
            conn.execute(delete(workers).where(workers.c.name == name))

    def ready_count(self, within_s: float) -> int:
        """Workers with models loaded that beat within ``within_s``."""
        with self.db.read() as conn:
            count = conn.scalar(
                select(func.count())
                .select_from(workers)
                .where(workers.c.ready_at.is_not(None), workers.c.seen_at > time.time() - within_s)
            )
        return int(count or 0)
