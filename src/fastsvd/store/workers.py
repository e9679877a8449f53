"""The worker roster: who is alive, and whether any has its models loaded (``/ready``).

Each row names its process (host id, pid, start time; see ``fastsvd.processes``), so that a
worker on the same host can tell that a holder of jobs is gone (``JobStore.requeue_dead_holders``).
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterable

from sqlalchemy import bindparam, delete, insert, select, update

from fastsvd.processes import ProcessIdentity, this_process
from fastsvd.store.db import Database
from fastsvd.store.tables import workers

MARK_IDLE = (  # also written with a result (``JobStore.complete``)
    update(workers)
    .where(workers.c.name == bindparam("w_name"))
    .values(idle_since=bindparam("v_since"))
)


class WorkerRoster:
    """Heartbeats of worker processes."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def register(
        self,
        name: str,
        who: ProcessIdentity | None = None,
        endpoints: Iterable[str] | None = None,
        wake_channel: str | None = None,
    ) -> None:
        """A worker starts (models not loaded yet); ``who``: its process (default: this one);
        ``endpoints``: the ids it serves (None: all); ``wake_channel``: where its process
        hears the wake-ups meant for it (PostgreSQL)."""
        who = this_process() if who is None else who
        now = time.time()
        with self.db.write() as conn:
            conn.execute(delete(workers).where(workers.c.name == name))
            conn.execute(
                insert(workers).values(
                    name=name,
                    host=socket.gethostname(),
                    pid=who.pid,
                    host_id=who.host_id,
                    start_ticks=who.start_ticks,
                    started_at=now,
                    seen_at=now,
                    endpoints=json.dumps(list(endpoints)) if endpoints is not None else None,
                    wake_channel=wake_channel,
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

    def mark_idle(self, name: str, idle: bool) -> None:
        """The worker waits for work (a submit may pick it: ``JobStore.submit``), or no longer
        does. One statement."""
        with self.db.statement() as conn:
            conn.execute(MARK_IDLE, {"w_name": name, "v_since": time.time() if idle else None})

    def leave(self, name: str) -> None:
        """The worker stops."""
        with self.db.write() as conn:
            conn.execute(delete(workers).where(workers.c.name == name))

    def ready_endpoints(self, within_s: float) -> tuple[int, Counter[str], int]:
        """Workers with models loaded that beat within ``within_s``: how many, how many serve
        each endpoint, and how many serve all (workers registered without a list)."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(workers.c.endpoints).where(
                    workers.c.ready_at.is_not(None), workers.c.seen_at > time.time() - within_s
                )
            ).all()
        counts: Counter[str] = Counter()
        serve_all = 0
        for (listed,) in rows:
            if listed is None:
                serve_all += 1
            else:
                counts.update(json.loads(listed))
        return len(rows), counts, serve_all

    def serves(self, endpoint: str, within_s: float) -> bool:
        """Whether a ready worker serves ``endpoint``."""
        _total, counts, serve_all = self.ready_endpoints(within_s)
        return bool(serve_all or counts[endpoint])
