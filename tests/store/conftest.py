"""The store tests' database: a fresh, migrated SQLite file or PostgreSQL database per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fastsvd.store.db import Database
from fastsvd.store.migrations import migrate
from tests.databases import KINDS, database_url


@pytest.fixture(params=KINDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with database_url(request.param, tmp_path) as url:
        database = Database(url)
        migrate(database)
        try:
            yield database
        finally:
            database.dispose()
