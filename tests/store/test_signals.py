"""Wake-ups and cancel signals: NOTIFY on PostgreSQL, datagrams on one machine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from fastsvd.store.db import Database
from fastsvd.store.jobs import JobStore
from fastsvd.store.migrations import migrate
from fastsvd.store.tables import workers
from fastsvd.store.workers import WorkerRoster
from fastsvd.wakeup import IdleMark, PostgresListener, Waker, WakeupListener
from tests.databases import postgres_database
from tests.support.bodies import T2V


@pytest.fixture
def pg() -> Iterator[Database]:
    with postgres_database() as url:
        db = Database(url)
        migrate(db)
        try:
            yield db
        finally:
            db.dispose()


def test_each_submit_wakes_one_idle_worker_over_one_shared_connection(pg: Database) -> None:
    store = JobStore(pg)
    listeners = [PostgresListener(pg.url) for _ in range(3)]
    try:
        assert listeners[0].connected.wait(10)
        for listener in listeners:
            listener.wait(0)  # the wake-up every (re)connection starts with
            assert not listener.wait(0.1)
        store.submit(key_id="k", endpoint=T2V, input={})
        deadline = time.monotonic() + 60
        while not any(listener._woken.is_set() for listener in listeners):
            assert time.monotonic() < deadline, "nobody woke"
            time.sleep(0.005)
        time.sleep(0.2)
        assert sum(listener._woken.is_set() for listener in listeners) == 1  # no herd
        for _ in range(2):
            store.submit(key_id="k", endpoint=T2V, input={})
        # Three jobs, three distinct workers woken. Flags are read, not cleared: a worker that
        # returned from ``wait`` counts as idle again until it claims, and could take a wake-up.
        deadline = time.monotonic() + 60
        while not all(listener._woken.is_set() for listener in listeners):
            assert time.monotonic() < deadline, "not every idle worker woke"
            time.sleep(0.005)
        with pg.read() as conn:
            listening = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            )
        assert listening == 1  # the workers of a process share one connection
    finally:
        for listener in listeners:
            listener.close()


def test_a_cancel_reaches_the_worker_watching_that_job_only(pg: Database) -> None:
    store = JobStore(pg)
    listener = PostgresListener(pg.url)
    try:
        assert listener.connected.wait(10)
        mine, _ = store.submit(key_id="k", endpoint=T2V, input={})
        other, _ = store.submit(key_id="k", endpoint=T2V, input={})
        assert store.claim("w1", 30, [T2V]) is not None
        assert store.claim("w2", 30, [T2V]) is not None
        listener.watch(mine.id)
        store.request_cancel(other.id, None)
        store.request_cancel(mine.id, None)
        deadline = time.monotonic() + 60
        while not listener.cancelled(mine.id):
            assert time.monotonic() < deadline, "cancel not heard"
            time.sleep(0.01)
        assert not listener.cancelled(other.id)
        listener.watch(None)
        assert not listener.cancelled(mine.id)
    finally:
        listener.close()


def test_datagram_wakeups_on_one_machine(tmp_path: Path) -> None:
    listener = WakeupListener(tmp_path / "wake", "w1")
    waker = Waker(tmp_path / "wake")
    try:
        assert not listener.wait(0.05)
        assert not listener.wait(0)  # a reaping round due now: a look, not a crash
        waker.wake_all()
        assert listener.wait(0)  # a local datagram is there at once
        listener.wake()  # what a stop signal does
        assert listener.wait(5)
    finally:
        listener.close()
        waker.close()


def test_each_submit_on_one_machine_wakes_one_idle_worker_and_a_claim_passes_it_on(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "wake"
    idle, busy, other = (WakeupListener(folder, name) for name in ("idle", "busy", "other"))
    waker = Waker(folder)
    try:
        for listener in (idle, other):
            assert not listener.wait(0)  # waiting for work: marked idle
        busy.watch("job-1")  # running a job: not idle
        waker.wake_one()
        woken = [listener for listener in (idle, other) if listener.wait(0)]
        assert len(woken) == 1  # no herd
        woken[0].watch("job-2")  # it claimed a job: another idle worker looks
        woken[0].pass_on()
        (rest,) = {idle, other} - set(woken)
        assert rest.wait(0)
        rest.watch("job-3")
        assert not busy.wait(0)  # the busy worker was never woken; it waits now, job 1 done
        busy.watch("job-4")
        assert not list((folder / "idle").iterdir())
        waker.wake_one()  # nobody idle: everyone, one may be on its way to waiting
        assert all(listener.wait(0) for listener in (idle, busy, other))
    finally:
        for listener in (idle, busy, other):
            listener.close()
        waker.close()


def test_a_submit_wakes_the_worker_idle_longest_by_name_and_takes_its_mark(pg: Database) -> None:
    store, roster = JobStore(pg), WorkerRoster(pg)
    names = ("first", "second", "third")
    listeners = [PostgresListener(pg.url, IdleMark(name, pg, roster)) for name in names]
    try:
        assert listeners[0].connected.wait(10)
        for name, listener in zip(names, listeners, strict=True):
            roster.register(name, wake_channel=listener.channel)
            roster.beat(name, ready=True)
            listener.wait(0)  # the wake-up every (re)connection starts with
            assert not listener.wait(0.01)  # waiting for work: marked idle, in this order
        assert idle_marks(pg) == set(names)
        for expected in names:  # each submit wakes the one that waited longest, and only it
            store.submit(key_id="k", endpoint=T2V, input={})
            woken = wait_for_woken(listeners)
            assert woken.name == expected
            woken.watch(f"job-of-{expected}")  # it claimed one: no write, its mark is gone
            assert expected not in idle_marks(pg)
        assert idle_marks(pg) == set()
        listeners[0].watch(None)  # done: waits again, marked again
        assert not listeners[0].wait(0)
        assert idle_marks(pg) == {"first"}
    finally:
        for listener in listeners:
            listener.close()


@pytest.mark.parametrize(
    "other_process",
    [False, True],
    ids=["another idle worker of its process", "no idle worker there: every process"],
)
def test_a_wake_up_for_a_worker_that_took_other_work_goes_to_another(
    pg: Database, other_process: bool
) -> None:
    store, roster = JobStore(pg), WorkerRoster(pg)
    busy = PostgresListener(pg.url, IdleMark("busy", pg, roster))
    # a worker the roster does not know idle: of the same process, or of another (its own hub)
    other = PostgresListener(f"{pg.url}?application_name=other" if other_process else pg.url)
    try:
        assert busy.connected.wait(10)
        assert other.connected.wait(10)
        roster.register("busy", wake_channel=busy.channel)
        roster.beat("busy", ready=True)
        for listener in (busy, other):
            listener.wait(0)
        assert not busy.wait(0.01)  # marked idle...
        busy._woken.set()  # ...then woken by a poll, about to claim: not idle any more
        store.submit(key_id="k", endpoint=T2V, input={})
        assert wait_for_woken([other]) is other  # the wake-up named "busy" went to "other"
    finally:
        busy.close()
        other.close()


def idle_marks(db: Database) -> set[str]:
    with db.read() as conn:
        return set(conn.scalars(select(workers.c.name).where(workers.c.idle_since.is_not(None))))


def wait_for_woken(listeners: list[PostgresListener]) -> PostgresListener:
    deadline = time.monotonic() + 60
    while True:
        woken = [listener for listener in listeners if listener._woken.is_set()]
        if woken:
            time.sleep(0.2)  # and nobody else
            woken = [listener for listener in listeners if listener._woken.is_set()]
            assert len(woken) == 1, [listener.name for listener in woken]
            woken[0]._woken.clear()
            return woken[0]
        assert time.monotonic() < deadline, "nobody woke"
        time.sleep(0.005)
