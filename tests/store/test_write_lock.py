"""SQLite's writers queue on fastsvd's own lock, across processes, before SQLite's."""

from __future__ import annotations

import threading
from pathlib import Path

from fastsvd.store.db import Database
from fastsvd.store.migrations import migrate


def test_a_writer_waits_for_the_write_lock_another_process_holds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fastsvd.db'}"
    # two Databases on one file hold the lock file open twice, as two processes do
    holder, waiter = Database(url), Database(url)
    migrate(holder)
    entered = threading.Event()

    def write() -> None:
        with waiter.write():
            entered.set()

    thread = threading.Thread(target=write)
    try:
        with holder._write_lock:  # a writer elsewhere, between its BEGIN and its commit
            thread.start()
            assert not entered.wait(0.3)  # SQLite itself is not locked: only the lock holds it
        assert entered.wait(30)  # released: the waiter goes on at once
    finally:
        thread.join(30)
        holder.dispose()
        waiter.dispose()
