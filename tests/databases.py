"""Real databases for the tests: a fresh SQLite file, or a fresh PostgreSQL database.

PostgreSQL is reached through ``FASTSVD_TEST_POSTGRES`` (an admin URL; by default the local
server with trust authentication). Each test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from fastsvd.store.db import normalize_url

ADMIN_URL = os.environ.get("FASTSVD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
KINDS = ("sqlite", "postgresql")


@contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped on exit."""
    name = f"fastsvd_test_{secrets.token_hex(6)}"
    # pre-ping: a test may restart the server, and the drop must still find a live connection
    admin = create_engine(
        normalize_url(ADMIN_URL), isolation_level="AUTOCOMMIT", pool_pre_ping=True
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        raise RuntimeError(
            f"the tests need PostgreSQL at {ADMIN_URL} (set FASTSVD_TEST_POSTGRES to an admin "
            "URL of a server they may create databases on)"
        ) from exc
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def database_url(kind: str, folder: Path) -> Iterator[str]:
    """A fresh database of ``kind`` (``sqlite`` or ``postgresql``)."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'fastsvd.db'}"
    else:
        with postgres_database() as url:
            yield url
