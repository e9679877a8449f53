"""Connections and transactions; the only module that knows which database it talks to.

SQLite (the embedded default) runs in WAL mode with full fsync (but for the writes whose loss
loses nothing, ``write(durable=False)``), and takes its write lock at the start of a write
transaction (``BEGIN IMMEDIATE``) so that concurrent writers queue instead of
failing on a lock upgrade. Writers of every fastsvd process queue first on a lock of their own
(``WriteLock``: a thread lock, then ``flock`` on a file beside the database), which wakes the next
writer the moment the last one commits; SQLite's own busy wait polls with sleeps of up to 100 ms,
which at hundreds of writes a second left the lock idle most of the time. Reads use plain
deferred transactions and never block writers.

PostgreSQL (``postgresql://...``, through psycopg 3) runs at READ COMMITTED with a connection
pool of a fixed size, whose connections stay open. A connection that sat in the pool for more
than ``POSTGRES_PING_IDLE_S`` is checked before use (one that came back moments ago is not: a
round trip saved on every busy transaction); a server restarted under a busy process fails that
process's transactions in flight once, and the first failure replaces every pooled connection.
So a restart costs the callers one failed transaction each, not a dead process: ``read`` and
``write`` turn a database that cannot be reached into ``StoreUnavailable`` here, once, and
callers retry on that alone (``fastsvd.retry``). Every connection's waits are bounded
(``POSTGRES_LINK``: a connect timeout, TCP keepalives and a TCP user timeout; a statement timeout
well under the lease), so a link that silently drops packets is noticed within seconds, not
after TCP's minutes of retransmissions. Notifications (``notify``) go out with the transaction
that sends them, on commit; SQLite has none, and its processes wake each other through
``fastsvd.wakeup`` instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, InvalidatePoolError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

from fastsvd import constants as c
from fastsvd.errors import StoreUnavailable
from fastsvd.retry import Backoff

SQLITE_POOL_SIZE = 8
POSTGRES_POOL_SIZE = 5
# libpq parameters of every PostgreSQL connection (the pool's and the listener's):
POSTGRES_LINK: dict[str, int] = {
    "connect_timeout": c.POSTGRES_CONNECT_TIMEOUT_S,
    # an idle connection (in the pool, or listening) whose peer went silent dies in about 3 s
    "keepalives": 1,
    "keepalives_idle": 1,
    "keepalives_interval": 1,
    "keepalives_count": 2,
    # data sent and not acknowledged for this long (ms) ends the connection: a statement in
    # flight when the link drops fails in a second instead of waiting out TCP's retransmissions.
    # Acknowledgements come from the server's kernel, busy or not: on a working network one
    # later than a second means the path is gone (and a false alarm costs one retried call).
    # With the connect timeout, an API call on a link that just dropped answers 503 in ~3 s.
    "tcp_user_timeout": 1000,
}

# LISTEN/NOTIFY channels (PostgreSQL)
WAKE_CHANNEL = "fastsvd_wake"  # a job was queued (payload: its endpoint)
CANCEL_CHANNEL = "fastsvd_cancel"  # a running job was asked to stop (payload: its id)


def normalize_url(url: str) -> str:
    """The SQLAlchemy URL for ``url``: ``postgresql://`` (and ``postgres://``) mean psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached right now (retry later)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


@contextmanager
def _translated() -> Iterator[None]:
    """The store's boundary: a database that cannot be reached becomes ``StoreUnavailable``."""
    try:
        yield
    except DBAPIError as exc:
        if not is_unavailable(exc):
            raise
        raise StoreUnavailable(f"the job store is unavailable: {exc.orig or exc}") from exc
    except PoolTimeout as exc:  # every pooled connection is stuck on the database
        raise StoreUnavailable(f"the job store is unavailable: {exc}") from exc


def statement_timeout_s(lease_s: float) -> float:
    """The statement timeout for workers holding ``lease_s`` leases: one renewal's time (a third
    of the lease, ``RENEWALS_PER_LEASE``; at least 1 s), at most
    ``POSTGRES_STATEMENT_TIMEOUT_S``."""
    return max(1.0, min(c.POSTGRES_STATEMENT_TIMEOUT_S, lease_s / c.RENEWALS_PER_LEASE))


class Database:
    """An engine plus ``read()`` and ``write()`` transactions."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = POSTGRES_POOL_SIZE,
        statement_timeout_s: float = c.POSTGRES_STATEMENT_TIMEOUT_S,
    ) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.is_postgres = self.url.startswith("postgresql")
        # A read on a local SQLite file takes well under a millisecond and, in WAL mode, never
        # waits for a writer: cheaper to run inline than to hand to a thread.
        self.cheap_reads = self.is_sqlite
        self._write_lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if self.is_sqlite:
            self.engine = _sqlite_engine(self.url)
            database = self.engine.url.database
            if database and database != ":memory:":
                self._write_lock = WriteLock(Path(f"{database}.write-lock"))
        else:
            self.engine = create_engine(
                self.url,
                hide_parameters=True,  # errors and logs never carry row values (key hashes)
                pool_size=pool_size,
                # never more: a connection opened beyond the pool would be closed after one
                # transaction, and each costs the server a process start (callers wait instead)
                max_overflow=0,
                pool_timeout=c.POSTGRES_CONNECT_TIMEOUT_S * 2,
                connect_args=dict(POSTGRES_LINK),
            )
            timeout_ms = int(statement_timeout_s * 1000)

            @event.listens_for(self.engine, "connect")
            def on_connect(dbapi_connection: Any, _record: Any) -> None:
                with dbapi_connection.cursor() as cursor:
                    cursor.execute(f"SET statement_timeout = {timeout_ms}")
                dbapi_connection.commit()

            _ping_when_idle(self.engine)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction."""
        with _translated(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Connection]:
        """A write transaction, committed on success; SQLite takes its write lock up front.

        Not ``durable`` (a write that may be lost to a power cut, because losing it loses
        nothing: a claim, a lease renewal, progress lines): on SQLite its commit does not wait
        for the disk (``synchronous=NORMAL``); the next durable commit writes it there too."""
        with _translated(), self._write_lock, self.engine.connect() as conn:
            relaxed = self.is_sqlite and not durable
            if relaxed:
                conn.connection.dbapi_connection.execute("PRAGMA synchronous=NORMAL")  # type: ignore[union-attr]
            try:
                conn.execution_options(fastsvd_immediate=True)
                with conn.begin():
                    yield conn
            finally:
                if relaxed:
                    conn.connection.dbapi_connection.execute("PRAGMA synchronous=FULL")  # type: ignore[union-attr]

    @contextmanager
    def statement(self, *, durable: bool = True) -> Iterator[Connection]:
        """A write of one statement, atomic on its own. On PostgreSQL it runs without BEGIN and
        COMMIT (autocommit): one round trip instead of three. On SQLite, a ``write``."""
        if not self.is_postgres:
            with self.write(durable=durable) as conn:
                yield conn
            return
        with _translated(), self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")  # reset when it goes back
            yield conn

    def notify(self, conn: Connection, channel: str, payload: str = "") -> None:
        """Send a notification when ``conn``'s transaction commits (PostgreSQL only)."""
        if self.is_postgres:
            conn.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {
                    "channel": channel,
                    "payload": payload,
                },
            )

    def lock_for_migrations(self, conn: Connection) -> None:
        """Serialise schema changes between processes, until ``conn``'s transaction ends."""
        if self.is_postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        # SQLite: the write transaction (BEGIN IMMEDIATE) already excludes other writers.

    def dispose(self) -> None:
        """Close every pooled connection (before a fork, and at exit)."""
        self.engine.dispose()


MIGRATION_LOCK = 0x66617374737664  # "fastsvd"


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection before use when it has been idle ``POSTGRES_PING_IDLE_S``; one
    that does not answer is replaced (and the pool with it) before the caller gets it."""

    @event.listens_for(engine, "checkin")
    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop(_IDLE_SINCE, None)
        if idle_since is None or time.monotonic() - idle_since < c.POSTGRES_PING_IDLE_S:
            return  # new, or back in use moments after its last transaction
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise InvalidatePoolError(f"a pooled connection is gone: {exc}") from exc


_IDLE_SINCE = "fastsvd_idle_since"


class WriteLock:
    """SQLite's writers, queued: a thread lock for this process's threads, then an exclusive
    ``flock`` on ``path`` for the processes sharing the database. The kernel hands it to the
    next waiter as soon as it is released. Held for a whole write transaction, commit included.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> WriteLock:
        self._threads.acquire()
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


def _sqlite_engine(url: str) -> Engine:
    # Pooled connections: opening one (and setting its pragmas) costs more than a status read.
    engine = create_engine(
        url,
        connect_args={"timeout": c.SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        hide_parameters=True,
        poolclass=QueuePool,
        pool_size=SQLITE_POOL_SIZE,
        max_overflow=SQLITE_POOL_SIZE,
    )

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")  # an answered submit survives a power cut
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("fastsvd_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _use_wal(cursor: Any) -> None:
    """Put the file in WAL mode (kept in the file: a no-op once it is there).

    The first switch of a new file needs its exclusive lock. Connections opening the file
    together (processes starting on a fresh data directory) each hold the shared lock the others
    wait for, and SQLite answers that deadlock with SQLITE_BUSY ("database is locked") at once
    rather than through the busy timeout; so the switch is retried here, for as long as the busy
    timeout.
    """
    deadline = time.monotonic() + c.SQLITE_BUSY_TIMEOUT_S
    backoff = Backoff(first_s=c.SQLITE_WAL_FIRST_DELAY_S, most_s=c.SQLITE_WAL_MAX_DELAY_S)
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(backoff.next())
