"""Connections and transactions; the only module that knows which database it talks to.

SQLite (the embedded default) runs in WAL mode with full fsync, and takes its write lock at the
start of a write transaction (``BEGIN IMMEDIATE``) so that concurrent writers queue instead of
failing on a lock upgrade. Reads use plain deferred transactions and never block writers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import QueuePool

SQLITE_BUSY_TIMEOUT_S = 30.0
SQLITE_POOL_SIZE = 8


class Database:
    """An engine plus ``read()`` and ``write()`` transactions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # A read on a local SQLite file takes well under a millisecond and, in WAL mode, never
        # waits for a writer: cheaper to run inline than to hand to a thread.
        self.cheap_reads = self.is_sqlite
        self.engine = (
            _sqlite_engine(url) if self.is_sqlite else create_engine(url, pool_pre_ping=True)
        )

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed on success; SQLite takes its write lock up front."""
        with self.engine.connect() as conn:
            conn.execution_options(fastsvd_immediate=True)
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        """Close every pooled connection (before a fork, and at exit)."""
        self.engine.dispose()


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite file at ``path``."""
    return f"sqlite:///{path}"


def _sqlite_engine(url: str) -> Engine:
    # Pooled connections: opening one (and setting its pragmas) costs more than a status read.
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        poolclass=QueuePool,
        pool_size=SQLITE_POOL_SIZE,
        max_overflow=SQLITE_POOL_SIZE,
    )

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # an answered submit survives a power cut
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("fastsvd_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
