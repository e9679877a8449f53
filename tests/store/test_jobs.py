"""The job store on SQLite and PostgreSQL: queue order, leases and fencing, cancel, reaping,
idempotency, migrations."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from fastsvd.errors import Cancelled, Failure, QueueFull
from fastsvd.store.db import Database
from fastsvd.store.files import FileRecord, FileStore, new_record
from fastsvd.store.jobs import CancelOutcome, Completed, JobState, JobStore, NextClaim
from fastsvd.store.keys import KeyStore, Scope
from fastsvd.store.migrations import MIGRATIONS, current_version, migrate
from fastsvd.store.tables import stage_timings, workers
from fastsvd.store.workers import WorkerRoster
from tests.databases import KINDS, database_url
from tests.support.bodies import T2V


@pytest.fixture
def store(db: Database) -> JobStore:
    return JobStore(db, max_attempts=2)


def submit(store: JobStore, key: str = "k1", **extra: object) -> str:
    job, new = store.submit(key_id=key, endpoint=T2V, input={"prompt": "x"}, **extra)  # type: ignore[arg-type]
    assert new
    return job.id


def test_migrations_are_idempotent(db: Database) -> None:
    assert current_version(db) == len(MIGRATIONS)
    assert migrate(db) == len(MIGRATIONS)


def test_a_database_at_version_1_is_upgraded_in_place(db: Database) -> None:
    with db.write() as conn:
        conn.execute(text("DROP INDEX ix_jobs_start_deadline"))  # added by migration 2
        conn.execute(text("DROP INDEX ix_jobs_key_created"))  # added by migration 3
        conn.execute(text("ALTER TABLE workers DROP COLUMN host_id"))  # migration 4
        conn.execute(text("ALTER TABLE workers DROP COLUMN start_ticks"))
        conn.execute(text("ALTER TABLE workers DROP COLUMN endpoints"))  # migration 5
        conn.execute(text("ALTER TABLE jobs DROP COLUMN output_lifetime_s"))  # migration 6
        conn.execute(text("ALTER TABLE jobs DROP COLUMN no_retry"))
        conn.execute(text("DROP TABLE webhook_signing_keys"))
        stage_timings.create(conn)  # dropped by migration 7
        conn.execute(text("DELETE FROM schema_version WHERE version > 1"))
    with db.write() as conn:  # a job written before the upgrade, without the new columns
        conn.execute(
            text(
                "INSERT INTO jobs (id, key_id, endpoint, input, state, priority, created_at, "
                "attempts, lease_token, cancel_requested, webhook_attempts) VALUES "
                "('old', 'k1', :endpoint, '{}', 'queued', 0, 1.0, 0, 0, false, 0)"
            ),
            {"endpoint": T2V},
        )
    assert current_version(db) == 1
    assert migrate(db) == len(MIGRATIONS) == 8
    with db.read() as conn:
        indexes = {i["name"] for i in inspect(conn).get_indexes("jobs")}
        columns = {c["name"] for c in inspect(conn).get_columns("workers")}
        job_columns = {c["name"] for c in inspect(conn).get_columns("jobs")}
        assert inspect(conn).has_table("webhook_signing_keys")
        assert not inspect(conn).has_table("stage_timings")
    assert {"ix_jobs_start_deadline", "ix_jobs_key_created"} <= indexes
    assert {"host_id", "start_ticks", "endpoints", "wake_channel", "idle_since"} <= columns
    assert {"output_lifetime_s", "no_retry"} <= job_columns
    job_id = "old"
    old = JobStore(db).get(job_id)
    assert old is not None
    assert (old.output_lifetime_s, old.no_retry) == (None, False)
    assert JobStore(db).get(job_id) is not None


def test_fifo_within_priority_and_low_priority_last(store: JobStore) -> None:
    low = submit(store, priority=1)
    first, second = submit(store), submit(store)
    positions = [store.queue_position(store.get(j)) for j in (first, second, low)]  # type: ignore[arg-type]
    assert positions == [0, 1, 2]
    claimed = [store.claim("w", 30, [T2V]) for _ in range(3)]
    assert [c.job.id for c in claimed if c] == [first, second, low]
    assert store.claim("w", 30, [T2V]) is None


def test_claims_never_hand_one_job_to_two_workers(store: JobStore) -> None:
    ids = {submit(store) for _ in range(20)}
    got: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (claim := store.claim(name, 30, [T2V])) is not None:
            with lock:
                got.append(claim.job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)


# Without the retried switch to WAL mode (store/db._use_wal), 19 of 20 runs of this test failed
# at thirty rounds: a new SQLite file opened by several connections at once loses the race often.
MIGRATION_RACE_ROUNDS = {"sqlite": 30, "postgresql": 3}


def migrate_together(url: str, processes: int = 4) -> list[BaseException]:
    """What ``processes`` stores starting at the same moment on ``url`` raise from ``migrate``."""
    databases = [Database(url) for _ in range(processes)]
    errors: list[BaseException] = []
    start = threading.Barrier(processes)

    def run(database: Database) -> None:
        start.wait()
        try:
            migrate(database)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,)) for d in databases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for database in databases:
        database.dispose()
    return errors


@pytest.mark.parametrize("kind", KINDS)
def test_processes_starting_together_migrate_an_empty_database_once(
    kind: str, tmp_path: Path
) -> None:
    for round_ in range(MIGRATION_RACE_ROUNDS[kind]):
        folder = tmp_path / str(round_)
        folder.mkdir()
        with database_url(kind, folder) as url:
            assert migrate_together(url) == [], f"round {round_}"
            database = Database(url)
            assert current_version(database) == len(MIGRATIONS)
            database.dispose()


def test_result_after_lost_lease_is_ignored(store: JobStore) -> None:
    job_id = submit(store)
    first = store.claim("w1", -1, [T2V])  # a lease that has already expired
    assert first is not None
    assert store.reap() == 1  # back to the queue
    second = store.claim("w2", 30, [T2V])  # handed on
    assert second is not None
    assert second.job.id == job_id
    assert second.token == first.token + 1
    assert not store.complete(job_id, first.token, {"late": True}, 1.0)
    assert not store.log(job_id, first.token, [(time.time(), "late line")])
    assert store.complete(job_id, second.token, {"video": 1}, 1.0)
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.output, job.attempts) == (JobState.completed, {"video": 1}, 2)
    assert store.logs(job_id) == []


def test_a_job_whose_worker_keeps_dying_ends_after_max_attempts(store: JobStore) -> None:
    job_id = submit(store)
    for _ in range(2):
        assert store.claim("w", -1, [T2V]) is not None
        store.reap()
    job = store.get(job_id)
    assert job is not None
    assert job.state == JobState.completed
    assert job.error_type == "runner_disconnected"


def test_a_no_retry_job_ends_when_its_first_worker_dies(store: JobStore) -> None:
    once, again = submit(store, no_retry=True), submit(store)
    for _ in range(2):
        assert store.claim("w", -1, [T2V]) is not None  # a lease that has already expired
    store.reap()
    ended, requeued = store.get(once), store.get(again)
    assert ended is not None
    assert requeued is not None
    assert (ended.state, ended.error_type, ended.attempts) == (
        JobState.completed,
        "runner_disconnected",
        1,
    )
    assert requeued.state == JobState.queued  # attempts left: runs again


def test_cancel_queued_running_and_finished(store: JobStore) -> None:
    queued, running = submit(store), submit(store, priority=-1)
    claim = store.claim("w", 30, [T2V])
    assert claim is not None
    assert claim.job.id == running
    assert store.request_cancel(queued, "k1") == CancelOutcome.requested
    assert store.get(queued).error_type == "cancelled"  # type: ignore[union-attr]
    assert store.request_cancel(running, "k1") == CancelOutcome.requested
    assert store.cancel_requested(running)
    assert store.fail(running, claim.token, Failure.of(Cancelled()))
    assert store.request_cancel(running, "k1") == CancelOutcome.already_completed
    assert store.request_cancel(running, "other-key") == CancelOutcome.not_found
    assert store.claim("w", 30, [T2V]) is None  # the cancelled queued job never runs


def test_start_deadline_ends_a_job_that_waited_too_long(store: JobStore) -> None:
    late = submit(store, start_deadline_at=0.0)
    on_time = submit(store, start_deadline_at=time.time() + 60)
    claim = store.claim("w", 30, [T2V])  # the late job is never started
    assert claim is not None
    assert claim.job.id == on_time
    assert store.get(late).state == JobState.queued  # type: ignore[union-attr]
    assert store.requeue_abandoned() == 1  # the reaping round ends it
    job = store.get(late)
    assert job is not None
    assert (job.state, job.error_type, job.http_status) == (
        JobState.completed,
        "request_timeout",
        504,
    )


def test_idempotent_submit_returns_the_first_job(store: JobStore) -> None:
    first, new = store.submit(key_id="k", endpoint=T2V, input={}, idempotency_key="abc")
    again, new_again = store.submit(key_id="k", endpoint=T2V, input={}, idempotency_key="abc")
    other, _ = store.submit(key_id="k2", endpoint=T2V, input={}, idempotency_key="abc")
    assert (new, new_again) == (True, False)
    assert again.id == first.id
    assert other.id != first.id


def test_jobs_are_scoped_to_their_key(store: JobStore) -> None:
    job_id = submit(store, key="k1")
    assert store.get(job_id, "k1") is not None
    assert store.get(job_id, "k2") is None


def test_failure_is_recorded_with_its_type(store: JobStore) -> None:
    job_id = submit(store)
    claim = store.claim("w", 30, [T2V])
    assert claim is not None
    assert store.log(job_id, claim.token, [(time.time(), "step 1/2")])
    assert store.fail(job_id, claim.token, Failure("boom", "generation_failed", 500), 0.5)
    job = store.get(job_id)
    assert job is not None
    assert (job.error, job.error_type, job.http_status) == ("boom", "generation_failed", 500)
    assert [line.message for line in store.logs(job_id)] == ["step 1/2"]


def test_keys_are_checked_by_hash_and_can_be_revoked(db: Database) -> None:
    keys = KeyStore(db)
    secret, info = keys.create("ci", Scope.admin)
    key_id, _, raw = secret.partition(":")
    assert keys.check(secret) == info
    assert keys.check(f"{key_id}:{'0' * len(raw)}") is None
    assert keys.check("nonsense") is None
    assert raw not in str(keys.list())  # only the hash is stored
    assert keys.revoke(key_id)
    assert keys.check(secret) is None
    assert not keys.revoke(key_id)


def test_a_keys_unfinished_requests_count_running_ones_too(db: Database) -> None:
    store = JobStore(db, max_active_per_key=2)
    submit(store)
    submit(store)
    assert store.claim("w", 30, [T2V]) is not None  # one running, one queued: still two
    with pytest.raises(QueueFull, match="2 unfinished requests") as caught:
        submit(store)
    assert caught.value.retry_after_s > 0
    submit(store, key="k2")  # another key is not affected


def test_a_keys_submits_a_minute_are_capped(db: Database) -> None:
    store = JobStore(db, submits_per_minute=2)
    first = submit(store)
    submit(store)
    assert store.request_cancel(first, "k1") == CancelOutcome.requested  # finished, still counted
    with pytest.raises(QueueFull, match="2 requests a minute") as caught:
        submit(store)
    assert 1 <= caught.value.retry_after_s <= 60
    submit(store, key="k2")


def test_a_job_handed_back_during_an_outage_keeps_its_attempts(store: JobStore) -> None:
    """A worker that could not read a job's input while a store was away hands it back with
    the attempt not counted: no number of outages uses up ``max_attempts``."""
    job_id = submit(store)
    for _ in range(3):  # more than max_attempts (2)
        claim = store.claim("w1", 30, [T2V])
        assert claim is not None
        assert claim.job.attempts == 1
        assert store.release(job_id, claim.token, count_attempt=False)
    claim = store.claim("w1", 30, [T2V])
    assert claim is not None
    assert store.release(job_id, claim.token)  # a shutdown's hand-back counts
    assert store.claim("w1", 30, [T2V]).job.attempts == 2  # type: ignore[union-attr]


def test_a_claim_returns_the_row_as_stored(store: JobStore) -> None:
    job_id = submit(store)
    claim = store.claim("w", 30, [T2V])
    assert claim is not None
    assert claim.job == store.get(job_id)  # built without reading it again


def test_the_result_its_last_lines_and_its_file_are_one_write(
    store: JobStore, db: Database
) -> None:
    files = FileStore(db)
    job_id = submit(store)
    first = store.claim("w1", 0.0, [T2V])  # expires at once
    assert first is not None
    assert store.reap() == 1
    second = store.claim("w2", 30, [T2V])
    assert second is not None

    def record() -> FileRecord:
        return new_record(
            key_id="k1",
            kind="output",
            file_name="v.mp4",
            content_type="video/mp4",
            size=3,
            retention_s=60,
        )

    late = record()
    assert not store.complete(
        job_id, first.token, {"video": 1}, 1.0, logs=[(time.time(), "late")], output_file=late
    )
    assert files.get(late.id) is None  # the lost lease wrote nothing at all
    assert store.logs(job_id) == []

    mine = record()
    lines = [(time.time(), "video: step 1/2"), (time.time(), "video: step 2/2")]
    assert store.complete(job_id, second.token, {"video": 2}, 1.0, logs=lines, output_file=mine)
    assert files.get(mine.id) == mine
    assert [line.message for line in store.logs(job_id)] == [m for _at, m in lines]


def test_a_result_claims_the_next_job_in_its_transaction(store: JobStore) -> None:
    first_id, second_id = submit(store), submit(store)
    first = store.claim("w1", -1, [T2V])  # a lease that has already expired
    assert first is not None
    assert store.reap() == 1  # first_id is queued again, behind nothing: it is first
    again = store.claim("w2", 30, [T2V])
    assert again is not None
    assert again.job.id == first_id
    w1 = NextClaim("w1", 30, [T2V])
    assert store.complete(first_id, first.token, {"late": 1}, 1.0, claim_next=w1) is None
    assert store.get(second_id).state == JobState.queued  # type: ignore[union-attr]  # no claim

    done = store.complete(first_id, again.token, {"video": 1}, 1.0, claim_next=w1)
    assert done is not None
    assert done.next is not None
    held = store.get(second_id)
    assert held is not None
    assert (done.next.job.id, done.next.token) == (second_id, held.lease_token)
    assert (held.state, held.attempts, held.started_at) == (
        JobState.running,
        1,
        done.next.job.started_at,
    )
    assert store.complete(second_id, done.next.token, {"video": 2}, 1.0, claim_next=w1) == (
        Completed(None, looked=True)  # nothing left to claim
    )


def test_a_claim_says_whether_more_jobs_wait_for_the_claimant(store: JobStore) -> None:
    first, second = submit(store), submit(store)
    store.submit(key_id="k1", endpoint="other/app", input={})  # not for the claimant
    claim = store.claim("w1", 30, [T2V])
    assert claim is not None
    assert (claim.job.id, claim.more) == (first, True)
    claim = store.claim("w2", 30, [T2V])
    assert claim is not None
    assert (claim.job.id, claim.more) == (second, False)


def test_a_result_whose_claim_finds_nothing_marks_its_worker_idle(
    store: JobStore, db: Database
) -> None:
    WorkerRoster(db).register("w1")
    job_id = submit(store)
    claim = store.claim("w1", 30, [T2V])
    assert claim is not None
    asks = NextClaim("w1", 30, [T2V], mark_idle=True)
    assert store.complete(job_id, claim.token, {"video": 1}, 1.0, claim_next=asks) == Completed(
        None, looked=True
    )
    with db.read() as conn:
        idle_since = conn.scalar(select(workers.c.idle_since).where(workers.c.name == "w1"))
    assert idle_since is not None  # in the result's transaction: it waits for work next
