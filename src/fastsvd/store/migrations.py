"""Schema migrations: numbered steps, each applied once, in order, on any supported database.

A step is a function of a connection. Add new steps at the end; never edit an applied one. Every
process runs ``migrate`` at start; the version table makes that idempotent, and the write lock
(SQLite) or an advisory-free unique insert (PostgreSQL) makes concurrent starts safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, func, insert, inspect, select
from sqlalchemy.exc import IntegrityError

from fastsvd.store import tables
from fastsvd.store.db import Database


def _v1_initial(conn: Connection) -> None:
    """The first schema: keys, jobs, logs, files, workers."""
    for table in (
        tables.api_keys,
        tables.jobs,
        tables.job_logs,
        tables.files,
        tables.workers,
        tables.stage_timings,
    ):
        table.create(conn, checkfirst=True)


MIGRATIONS: list[Callable[[Connection], None]] = [_v1_initial]


def current_version(db: Database) -> int:
    """The newest applied migration, 0 for an empty database."""
    with db.read() as conn:
        if not inspect(conn).has_table(tables.schema_version.name):
            return 0
        version = conn.scalar(select(func.max(tables.schema_version.c.version)))
        return int(version or 0)


def migrate(db: Database) -> int:
    """Apply every missing migration; returns the version the database is at."""
    with db.write() as conn:
        tables.schema_version.create(conn, checkfirst=True)
    for number, step in enumerate(MIGRATIONS, start=1):
        try:
            with db.write() as conn:
                done = conn.scalar(
                    select(tables.schema_version.c.version).where(
                        tables.schema_version.c.version == number
                    )
                )
                if done is not None:
                    continue
                step(conn)
                conn.execute(
                    insert(tables.schema_version).values(version=number, applied_at=time.time())
                )
        except IntegrityError:
            continue  # another process applied it at the same moment
    return current_version(db)
