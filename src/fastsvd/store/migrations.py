"""Schema migrations: numbered steps, each applied once, in order, on any supported database.

A step is a function of a connection. Add new steps at the end; never edit an applied one. Every
process runs ``migrate`` at start; the version table makes that idempotent, and a lock held for
the whole run makes concurrent starts safe on either database.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, Table, func, insert, inspect, select, text

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


def _v2_start_deadline_index(conn: Connection) -> None:
    """Index the start deadline: claims sweep expired ones without scanning the queue."""
    index = next(i for i in tables.jobs.indexes if i.name == "ix_jobs_start_deadline")
    index.create(conn, checkfirst=True)


def _v3_key_created_index(conn: Connection) -> None:
    """Index a key's requests by time: the submit-rate limit and the history read it."""
    index = next(i for i in tables.jobs.indexes if i.name == "ix_jobs_key_created")
    index.create(conn, checkfirst=True)


def _add_columns(conn: Connection, table: Table, *names: str) -> None:
    have = {column["name"] for column in inspect(conn).get_columns(table.name)}
    for name in names:
        if name not in have:  # a database made by _v1_initial of today has them already
            kind = table.c[name].type.compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}"))


def _v4_worker_identity(conn: Connection) -> None:
    """Record each worker's host and process start, so the dead can be told from the stalled."""
    _add_columns(conn, tables.workers, "host_id", "start_ticks")


def _v5_worker_endpoints(conn: Connection) -> None:
    """Record the endpoints each worker serves, for /ready and a waiting request's status."""
    _add_columns(conn, tables.workers, "endpoints")


def _v6_fal_request_options_and_signing_keys(conn: Connection) -> None:
    """fal's per-request output lifetime and no-retry flag; the keys of fal-style webhooks."""
    _add_columns(conn, tables.jobs, "output_lifetime_s", "no_retry")
    tables.webhook_signing_keys.create(conn, checkfirst=True)


def _v7_drop_stage_timings(conn: Connection) -> None:
    """Stage times are each worker's Prometheus histogram: no row per stage of every job."""
    tables.stage_timings.drop(conn, checkfirst=True)


def _v8_idle_workers(conn: Connection) -> None:
    """Record which workers wait for work, and where to wake each: a submit wakes one."""
    _add_columns(conn, tables.workers, "wake_channel", "idle_since")


MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1_initial,
    _v2_start_deadline_index,
    _v3_key_created_index,
    _v4_worker_identity,
    _v5_worker_endpoints,
    _v6_fal_request_options_and_signing_keys,
    _v7_drop_stage_timings,
    _v8_idle_workers,
]


def current_version(db: Database) -> int:
    """The newest applied migration, 0 for an empty database."""
    with db.read() as conn:
        if not inspect(conn).has_table(tables.schema_version.name):
            return 0
        version = conn.scalar(select(func.max(tables.schema_version.c.version)))
        return int(version or 0)


def migrate(db: Database) -> int:
    """Apply every missing migration in one transaction; returns the version reached.

    Processes starting together queue on a lock (PostgreSQL: an advisory lock; SQLite: the
    write lock) and find the work done. A failed step rolls back with everything before it.
    """
    with db.write() as conn:
        db.lock_for_migrations(conn)
        tables.schema_version.create(conn, checkfirst=True)
        applied = set(conn.scalars(select(tables.schema_version.c.version)))
        for number, step in enumerate(MIGRATIONS, start=1):
            if number in applied:
                continue
            step(conn)
            conn.execute(
                insert(tables.schema_version).values(version=number, applied_at=time.time())
            )
    return current_version(db)
