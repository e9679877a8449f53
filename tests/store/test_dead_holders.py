"""Jobs whose holder is known to be dead go back to the queue at once, on both databases; a
holder that may be alive (this host, same process) or cannot be judged (another host, an
unknown identity) keeps its job until its lease expires."""

from __future__ import annotations

import dataclasses
import subprocess
import threading

from sqlalchemy import select

from fastsvd.processes import ProcessIdentity, identity_of, this_process
from fastsvd.store.db import Database
from fastsvd.store.jobs import JobState, JobStore
from fastsvd.store.tables import workers
from fastsvd.store.workers import WorkerRoster
from tests.support.bodies import T2V

LONG_LEASE_S = 600.0  # never expires during a test: only a judged death frees the job


def reaped_process() -> ProcessIdentity:
    """The identity of a process that ran on this host and is gone (started, killed, reaped)."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        identity = identity_of(child.pid)
    finally:
        child.kill()
        child.wait()
    assert identity is not None
    return identity


def held_by(store: JobStore, registry: WorkerRoster, name: str, who: ProcessIdentity) -> str:
    """A job claimed by worker ``name``, registered as process ``who``."""
    registry.register(name, who)
    job, _new = store.submit(key_id="k", endpoint=T2V, input={"prompt": "x"})
    claim = store.claim(name, LONG_LEASE_S, [T2V])
    assert claim is not None
    assert claim.job.id == job.id
    return job.id


def registered(db: Database) -> set[str]:
    with db.read() as conn:
        return set(conn.scalars(select(workers.c.name)))


def test_a_job_of_a_dead_process_on_this_host_is_requeued_at_once(db: Database) -> None:
    store, registry = JobStore(db, max_attempts=3), WorkerRoster(db)
    job_id = held_by(store, registry, "dead", reaped_process())
    first_token = store.get(job_id).lease_token  # type: ignore[union-attr]
    registry.register("alive")  # this process
    assert store.requeue_dead_holders() == 1
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.attempts) == (JobState.queued, 1)  # attempt 1 counted, as on expiry
    assert registered(db) == {"alive"}  # the dead worker's row is gone
    again = store.claim("alive", LONG_LEASE_S, [T2V])
    assert again is not None
    assert (again.job.id, again.job.attempts, again.token) == (job_id, 2, first_token + 1)
    assert not store.complete(job_id, first_token, {"late": True}, 1.0)  # still fenced
    assert store.requeue_dead_holders() == 0  # the new holder is alive


def test_a_live_pid_with_another_start_time_is_not_the_holder(db: Database) -> None:
    store, registry = JobStore(db), WorkerRoster(db)
    me = this_process()
    assert me.start_ticks is not None
    earlier = dataclasses.replace(me, start_ticks=me.start_ticks - 1)  # this pid, reused
    job_id = held_by(store, registry, "reused-pid", earlier)
    assert store.requeue_dead_holders() == 1
    assert store.get(job_id).state == JobState.queued  # type: ignore[union-attr]


def test_a_live_holder_keeps_its_job(db: Database) -> None:
    store, registry = JobStore(db), WorkerRoster(db)
    job_id = held_by(store, registry, "alive", this_process())
    assert store.requeue_dead_holders() == 0
    assert store.get(job_id).state == JobState.running  # type: ignore[union-attr]
    assert registered(db) == {"alive"}


def test_a_holder_on_another_host_is_never_judged(db: Database) -> None:
    store, registry = JobStore(db), WorkerRoster(db)
    elsewhere = dataclasses.replace(reaped_process(), host_id="another-boot/another-pidns")
    job_id = held_by(store, registry, "elsewhere", elsewhere)
    assert store.requeue_dead_holders() == 0
    assert store.get(job_id).state == JobState.running  # type: ignore[union-attr]
    assert registered(db) == {"elsewhere"}


def test_a_holder_of_unknown_identity_is_never_judged(db: Database) -> None:
    store, registry = JobStore(db), WorkerRoster(db)
    unknown = dataclasses.replace(reaped_process(), start_ticks=None)  # e.g. no /proc
    job_id = held_by(store, registry, "unknown", unknown)
    assert store.requeue_dead_holders() == 0
    assert store.get(job_id).state == JobState.running  # type: ignore[union-attr]


def test_the_attempt_cap_holds_for_jobs_of_dead_holders(db: Database) -> None:
    store, registry = JobStore(db, max_attempts=2), WorkerRoster(db)
    job_id = held_by(store, registry, "dead", reaped_process())
    assert store.requeue_dead_holders() == 1  # attempt 1 of 2: back to the queue
    registry.register("dead again", reaped_process())
    assert store.claim("dead again", LONG_LEASE_S, [T2V]) is not None
    assert store.requeue_dead_holders() == 1  # attempt 2 of 2: given up
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.attempts, job.error_type) == (
        JobState.completed,
        2,
        "runner_disconnected",
    )


def test_workers_starting_together_requeue_a_job_once(db: Database) -> None:
    store, registry = JobStore(db), WorkerRoster(db)
    job_id = held_by(store, registry, "dead", reaped_process())
    start = threading.Barrier(4)
    counts: list[int] = []

    def new_worker() -> None:
        start.wait()
        counts.append(JobStore(db).requeue_dead_holders())

    threads = [threading.Thread(target=new_worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(counts) == [0, 0, 0, 1]
    claims = [store.claim(f"w{i}", LONG_LEASE_S, [T2V]) for i in range(2)]
    assert [c.job.id for c in claims if c] == [job_id]  # one run, not two
    assert store.get(job_id).attempts == 2  # type: ignore[union-attr]
