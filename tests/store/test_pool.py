"""PostgreSQL's pool: a connection idle for a while is checked before use, a busy one is not."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from fastsvd import constants as c
from fastsvd.errors import StoreUnavailable
from fastsvd.store.db import Database
from tests.databases import postgres_database
from tests.support.servers import wait_for


def server_ends(admin: Database, pid: int) -> None:
    """The server ends one connection (as a restart or an idle timeout does), and it is gone."""
    with admin.write() as conn:
        assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    def gone() -> bool:
        with admin.read() as conn:
            return not conn.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            )

    wait_for(gone, "the server to end the connection")


def backend_pid(db: Database) -> int:
    with db.read() as conn:
        return int(conn.scalar(text("SELECT pg_backend_pid()")) or 0)


def test_a_connection_dropped_while_idle_is_replaced_and_a_busy_one_is_not_pinged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with postgres_database() as url:
        db, admin = Database(url, pool_size=1), Database(url, pool_size=1)
        try:
            # back in use moments after its last transaction: not pinged (no round trip), so
            # a server that dropped it meanwhile fails this one call, and the pool is renewed
            monkeypatch.setattr(c, "POSTGRES_PING_IDLE_S", 3600.0)
            server_ends(admin, backend_pid(db))
            with pytest.raises(StoreUnavailable):
                backend_pid(db)
            fresh = backend_pid(db)

            # idle past POSTGRES_PING_IDLE_S: pinged first, and replaced before the call sees it
            monkeypatch.setattr(c, "POSTGRES_PING_IDLE_S", 0.0)
            server_ends(admin, fresh)
            assert backend_pid(db) not in (0, fresh)
        finally:
            db.dispose()
            admin.dispose()
