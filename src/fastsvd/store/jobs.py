"""Jobs: the queue, leases with fencing tokens, logs, results and cancellation.

Life cycle (``JobState``)::

    queued  --claim-->              running
    queued  --cancel / deadline-->  completed   (error: Cancelled / RequestTimeout)
    running --result / failure-->   completed
    running --cancel seen-->        completed   (error: Cancelled)
    running --lease expired-->      queued      (attempts left)  or  completed (WorkerLost)
    running --holder known dead-->  queued      (attempts left)  or  completed (WorkerLost)
    (a job submitted with x-fal-no-retry has no attempts left after its first)

A holder is known dead when it ran on the judging worker's host and its process is gone
(``requeue_dead_holders``); a holder elsewhere, or of unknown identity, keeps the job until its
lease expires. Either way the attempt was counted when the job was claimed.

The endings the store decides itself are recorded as ``Failure.of`` the error (``fastsvd.errors``).

A claim bumps the job's ``lease_token``; every later write from that worker names the token, so a
worker whose lease was taken (it stalled, the job was handed on) cannot write a late result.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from fastsvd import constants as c
from fastsvd import processes
from fastsvd.errors import Cancelled, Failure, QueueFull, RequestTimeout, WorkerLost
from fastsvd.store.db import CANCEL_CHANNEL, WAKE_CHANNEL, Database
from fastsvd.store.files import FileRecord
from fastsvd.store.tables import files, job_logs, jobs, workers
from fastsvd.store.workers import MARK_IDLE


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    queued = "queued"  # waiting for a worker
    running = "running"  # claimed by a worker that holds a lease
    completed = "completed"  # final: an output, or an error with its error_type


class CancelOutcome(enum.StrEnum):
    """What a cancel request found (fal's cancel answers)."""

    not_found = "NOT_FOUND"
    already_completed = "ALREADY_COMPLETED"
    requested = "CANCELLATION_REQUESTED"


GPU_FAULT = "GPU failure"  # the start of the log line of a job handed back by a failed GPU


@dataclass(frozen=True)
class Job:
    """A job as read from the store."""

    id: str
    seq: int
    key_id: str
    endpoint: str
    input: dict[str, Any]
    state: JobState
    priority: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    lease_token: int
    cancel_requested: bool
    output: dict[str, Any] | None
    error: str | None
    error_type: str | None
    http_status: int | None
    inference_time_s: float | None
    webhook_url: str | None
    base_url: str | None
    output_lifetime_s: float | None = None  # how long its files live; None: the retention
    no_retry: bool = False  # x-fal-no-retry: a lost worker ends it instead of a new attempt

    @classmethod
    def from_row(cls, row: Row[Any]) -> Job:
        """The job a ``jobs`` row holds: the columns by name, JSON and flags decoded."""
        values = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
        values["input"] = json.loads(row.input)
        values["output"] = json.loads(row.output) if row.output else None
        values["state"] = JobState(row.state)
        for flag in ("cancel_requested", "no_retry"):
            values[flag] = bool(values[flag])
        return cls(**values)


@dataclass(frozen=True)
class LogLine:
    """One line of a job's log."""

    id: int
    at: float
    level: str
    message: str


LogEntry = tuple[float, str]  # a log line: when (UNIX seconds) and what


@dataclass(frozen=True)
class Claim:
    """A job a worker holds, and the fencing token its writes must carry."""

    job: Job
    token: int
    more: bool = False  # another job was queued for the claimant's endpoints


@dataclass(frozen=True)
class NextClaim:
    """Who asks for a job: a worker's name, the lease it takes, the endpoints it serves; with
    ``mark_idle``, when a result's claim finds none, the worker is marked idle in the roster in
    the same transaction (``WorkerRoster.mark_idle``: it waits for work next)."""

    owner: str
    lease_s: float
    endpoints: Sequence[str]
    mark_idle: bool = False


@dataclass(frozen=True)
class Completed:
    """A result recorded, and the job claimed with it (``NextClaim``), if any. ``looked``: a
    claim was made with it, so with no ``next`` the queue had nothing for the worker (and, if
    it asked, the worker was marked idle)."""

    next: Claim | None = None
    looked: bool = False


# The status read runs for every poll of every client: its statements are built once, so
# SQLAlchemy compiles and caches them once instead of on every call.
_JOB_BY_ID = select(jobs).where(jobs.c.id == bindparam("job_id"))
_JOB_BY_ID_AND_KEY = _JOB_BY_ID.where(jobs.c.key_id == bindparam("key_id"))
_QUEUED_AHEAD = (
    select(func.count())
    .select_from(jobs)
    .where(
        jobs.c.state == JobState.queued.value,
        or_(
            jobs.c.priority < bindparam("priority"),
            and_(jobs.c.priority == bindparam("priority"), jobs.c.seq < bindparam("seq")),
        ),
    )
)
_LOGS_AFTER = (
    select(job_logs)
    .where(job_logs.c.job_id == bindparam("job_id"), job_logs.c.id > bindparam("after_id"))
    .order_by(job_logs.c.id)
)

# So is a submit's: the caps' counts and the insert, which returns the row it wrote.
_INSERT_JOB = insert(jobs).returning(*jobs.c)
_QUEUED_COUNT = select(func.count()).select_from(jobs).where(jobs.c.state == JobState.queued.value)
_ACTIVE_OF_KEY = (
    select(func.count())
    .select_from(jobs)
    .where(
        jobs.c.key_id == bindparam("key_id"),
        jobs.c.state.in_([JobState.queued.value, JobState.running.value]),
    )
)
_RECENT_OF_KEY = select(func.count(), func.min(jobs.c.created_at)).where(
    jobs.c.key_id == bindparam("key_id"), jobs.c.created_at > bindparam("since")
)

# PostgreSQL's wake-up of one worker: the longest idle one (``WorkerRoster.mark_idle``) serving
# the endpoint, through its process's channel, with its name (the process wakes that worker,
# or another idle one of its own, or everyone when it has none); with no worker marked idle,
# every process (each wakes one idle worker of its own, if it has one). A worker that died
# while marked is picked once (the pick takes the mark): that one job waits for another
# worker's safety poll (``idle_poll_s``) or its next claim.
_WAKE_LONGEST_IDLE = text(
    """
    WITH chosen AS (
        UPDATE workers SET idle_since = NULL
        WHERE name = (
            SELECT name FROM workers
            WHERE idle_since IS NOT NULL AND wake_channel IS NOT NULL
              AND ready_at IS NOT NULL AND seen_at > :alive_since
              AND (endpoints IS NULL OR jsonb_exists(CAST(endpoints AS jsonb), :endpoint))
            ORDER BY idle_since
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        )
        RETURNING name, wake_channel
    )
    SELECT pg_notify(
        COALESCE((SELECT wake_channel FROM chosen), :everyone),
        COALESCE((SELECT name FROM chosen), '') || ' ' || :endpoint
    )
    """
)

# So are a job's writes from its worker, a few for every job: the claim, the batches of log
# lines, the lease renewals, the result. Parameters: h_id and h_token (the held job), v_* (values).
_HELD = and_(
    jobs.c.id == bindparam("h_id"),
    jobs.c.lease_token == bindparam("h_token"),
    jobs.c.state == JobState.running.value,
)
_UNFINISHED = and_(jobs.c.id == bindparam("h_id"), jobs.c.state != JobState.completed.value)
_HELD_ID = select(jobs.c.id).where(_HELD)
# The claim is one statement: the next queued job (locked, skipping those another claim holds)
# started and returned, so a claim costs one round trip. Its start is ``v_now``, taken before
# the statement, or the job's created_at if that is later (a job committed meanwhile): a start
# never precedes its submit.
_NEXT_QUEUED_ID = (
    select(jobs.c.id)
    .where(
        jobs.c.state == JobState.queued.value,
        jobs.c.endpoint.in_(bindparam("endpoints", expanding=True)),
        # one past its start deadline never starts: the reaping round ends it
        or_(jobs.c.start_deadline_at.is_(None), jobs.c.start_deadline_at >= bindparam("v_now")),
    )
    .order_by(jobs.c.priority, jobs.c.seq)
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_OTHER = jobs.alias("other")
# Whether another job waits for the claimant (an idle worker should be woken for it): one probe
# of the queue's index, in the claim's own statement.
_MORE_QUEUED = (
    exists()
    .where(
        _OTHER.c.state == JobState.queued.value,
        _OTHER.c.endpoint.in_(bindparam("endpoints", expanding=True)),
        _OTHER.c.id != literal_column("jobs.id"),  # RETURNING names its columns bare
    )
    .label("more_queued")
)
_STARTED_AT = case(
    (jobs.c.created_at > bindparam("v_now"), jobs.c.created_at), else_=bindparam("v_now")
)
_START_NEXT = (
    update(jobs)
    .where(jobs.c.id == _NEXT_QUEUED_ID)
    .values(
        state=JobState.running.value,
        lease_owner=bindparam("v_owner"),
        lease_expires_at=_STARTED_AT + bindparam("v_lease_s"),
        lease_token=jobs.c.lease_token + 1,
        attempts=jobs.c.attempts + 1,
        started_at=_STARTED_AT,
    )
    .returning(*jobs.c, _MORE_QUEUED)
)
_PAST_START_DEADLINE = (
    select(jobs.c.id)
    .where(jobs.c.state == JobState.queued.value, jobs.c.start_deadline_at < bindparam("v_now"))
    .order_by(jobs.c.seq)
    .with_for_update(skip_locked=True)
)
_RENEW = update(jobs).where(_HELD).values(lease_expires_at=bindparam("v_expires_at"))


def _finishing(where: Any) -> Any:
    return (
        update(jobs)
        .where(where)
        .values(
            webhook_state=case((jobs.c.webhook_url.is_not(None), "pending"), else_=None),
            webhook_next_at=bindparam("v_finished_at"),
            state=JobState.completed.value,
            finished_at=bindparam("v_finished_at"),
            lease_owner=None,
            lease_expires_at=None,
            output=bindparam("v_output"),
            error=bindparam("v_error"),
            error_type=bindparam("v_error_type"),
            http_status=bindparam("v_http_status"),
            inference_time_s=bindparam("v_inference_time_s"),
        )
    )


_FINISH_HELD = _finishing(_HELD)  # by its worker: only while it holds the job
_FINISH_UNFINISHED = _finishing(_UNFINISHED)  # by anyone else (cancel, reaper, deadline)
_INSERT_LOGS = insert(job_logs)
_INSERT_FILE = insert(files)


class JobStore:
    """Every read and write of jobs goes through here."""

    def __init__(
        self,
        db: Database,
        *,
        max_attempts: int = 3,
        max_queued: int | None = None,
        max_active_per_key: int | None = None,
        submits_per_minute: int | None = None,
        serving_window_s: float = 90.0,
    ) -> None:
        self.db = db
        self.serving_window_s = serving_window_s  # a worker heard from within it is alive
        self.max_attempts = max_attempts
        self.max_queued = max_queued
        self.max_active_per_key = max_active_per_key
        self.submits_per_minute = submits_per_minute

    # --- the API side ---------------------------------------------------------------------

    def submit(
        self,
        *,
        key_id: str,
        endpoint: str,
        input: dict[str, Any],
        priority: int = 0,
        start_deadline_at: float | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        base_url: str | None = None,
        output_lifetime_s: float | None = None,
        no_retry: bool = False,
    ) -> tuple[Job, bool]:
        """Queue a job; returns it and whether it is new (False: an idempotent repeat).

        Raises ``QueueFull`` beyond the caps (queue depth, a key's unfinished requests, a key's
        submits in the last minute). On SQLite the count and the insert share the
        write lock, so the caps are exact; on PostgreSQL concurrent submits may overshoot a cap
        by the number of API processes submitting at the same instant.
        """
        if idempotency_key is not None:
            repeat = self._by_idempotency_key(key_id, idempotency_key)
            if repeat is not None:
                return repeat, False  # answered again, even when the queue is full
        job_id = str(uuid.uuid4())
        values = {
            "id": job_id,
            "key_id": key_id,
            "endpoint": endpoint,
            "input": json.dumps(input, separators=(",", ":")),
            "state": JobState.queued.value,
            "priority": priority,
            "created_at": time.time(),
            "start_deadline_at": start_deadline_at,
            "webhook_url": webhook_url,
            "idempotency_key": idempotency_key,
            "base_url": base_url,
            "output_lifetime_s": output_lifetime_s,
            "no_retry": no_retry,
        }
        try:
            with self.db.write() as conn:
                self._check_caps(conn, key_id)
                row = conn.execute(_INSERT_JOB, values).one()
                self._wake_one(conn, endpoint)
                return Job.from_row(row), True
        except IntegrityError:
            if idempotency_key is None:
                raise
        repeat = self._by_idempotency_key(key_id, idempotency_key)
        if repeat is None:  # pragma: no cover - the conflicting row cannot vanish
            raise RuntimeError("idempotency key conflict without a job")
        return repeat, False

    def _wake_one(self, conn: Connection, endpoint: str) -> None:
        """PostgreSQL: on commit, wake the worker serving ``endpoint`` that has waited longest
        (taking its idle mark, so that no other submit picks it too), else every process.
        One machine: the API's ``Waker`` does it, after the commit."""
        if self.db.is_postgres:
            alive_since = time.time() - self.serving_window_s
            conn.execute(
                _WAKE_LONGEST_IDLE,
                {"endpoint": endpoint, "alive_since": alive_since, "everyone": WAKE_CHANNEL},
            )

    def _by_idempotency_key(self, key_id: str, idempotency_key: str) -> Job | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(jobs).where(
                    jobs.c.key_id == key_id, jobs.c.idempotency_key == idempotency_key
                )
            ).first()
        return Job.from_row(row) if row is not None else None

    def _check_caps(self, conn: Connection, key_id: str) -> None:
        if self.max_queued is not None:
            total = conn.scalar(_QUEUED_COUNT) or 0
            if total >= self.max_queued:
                raise QueueFull(
                    f"The queue is full ({self.max_queued} requests waiting); retry later",
                    c.QUEUE_FULL_RETRY_AFTER_S,
                )
        if self.max_active_per_key is not None:
            count = conn.scalar(_ACTIVE_OF_KEY, {"key_id": key_id}) or 0
            if count >= self.max_active_per_key:
                raise QueueFull(
                    f"This key has {self.max_active_per_key} unfinished requests, its limit; "
                    "retry when some have finished",
                    c.QUEUE_FULL_RETRY_AFTER_S,
                )
        if self.submits_per_minute is not None:
            since = time.time() - c.RATE_WINDOW_S
            count, oldest = conn.execute(_RECENT_OF_KEY, {"key_id": key_id, "since": since}).one()
            if count >= self.submits_per_minute:
                wait = max(1, math.ceil(oldest + c.RATE_WINDOW_S - time.time()))
                raise QueueFull(
                    f"This key may submit {self.submits_per_minute} requests a minute; "
                    f"retry in {wait} s",
                    wait,
                )

    def get(self, job_id: str, key_id: str | None = None) -> Job | None:
        """The job, if it exists and (when ``key_id`` is given) belongs to that key."""
        with self.db.read() as conn:
            query = select(jobs).where(jobs.c.id == job_id)
            if key_id is not None:
                query = query.where(jobs.c.key_id == key_id)
            row = conn.execute(query).first()
        return Job.from_row(row) if row is not None else None

    def queue_position(self, job: Job) -> int:
        """How many queued jobs will start before ``job`` (0: it is next)."""
        with self.db.read() as conn:
            return self._position(conn, job)

    @staticmethod
    def _position(conn: Connection, job: Job) -> int:
        ahead = conn.scalar(_QUEUED_AHEAD, {"priority": job.priority, "seq": job.seq})
        return int(ahead or 0)

    def view(
        self, job_id: str, key_id: str | None, *, with_logs: bool
    ) -> tuple[Job, int | None, list[LogLine] | None] | None:
        """A status read in one transaction: the job, its queue position, its logs."""
        with self.db.read() as conn:
            if key_id is None:
                row = conn.execute(_JOB_BY_ID, {"job_id": job_id}).first()
            else:
                row = conn.execute(_JOB_BY_ID_AND_KEY, {"job_id": job_id, "key_id": key_id}).first()
            if row is None:
                return None
            job = Job.from_row(row)
            position = self._position(conn, job) if job.state == JobState.queued else None
            logs = self._logs(conn, job_id, 0) if with_logs else None
        return job, position, logs

    def recent(self, key_id: str | None, limit: int) -> list[Job]:
        """The newest ``limit`` jobs of ``key_id`` (None: of every key), newest first."""
        query = select(jobs).order_by(jobs.c.seq.desc()).limit(limit)
        if key_id is not None:
            query = query.where(jobs.c.key_id == key_id)
        with self.db.read() as conn:
            return [Job.from_row(row) for row in conn.execute(query)]

    def logs(self, job_id: str, after_id: int = 0) -> list[LogLine]:
        """The job's log lines with id > ``after_id``, in order."""
        with self.db.read() as conn:
            return self._logs(conn, job_id, after_id)

    @staticmethod
    def _logs(conn: Connection, job_id: str, after_id: int) -> list[LogLine]:
        rows = conn.execute(_LOGS_AFTER, {"job_id": job_id, "after_id": after_id}).all()
        return [LogLine(r.id, r.at, r.level, r.message) for r in rows]

    def request_cancel(self, job_id: str, key_id: str | None) -> CancelOutcome:
        """Cancel: a queued job ends at once; a running one is flagged for its worker."""
        with self.db.write() as conn:
            query = select(jobs.c.state).where(jobs.c.id == job_id).with_for_update()
            if key_id is not None:
                query = query.where(jobs.c.key_id == key_id)
            state = conn.scalar(query)
            if state is None:
                return CancelOutcome.not_found
            if state == JobState.completed:
                return CancelOutcome.already_completed
            if state == JobState.queued:
                self._finish(conn, job_id, None, failure=Failure.of(Cancelled()))
            else:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True))
                self.db.notify(conn, CANCEL_CHANNEL, job_id)
            return CancelOutcome.requested

    # --- the worker side ------------------------------------------------------------------

    def claim(self, owner: str, lease_s: float, endpoints: Sequence[str]) -> Claim | None:
        """Take the next queued job for ``endpoints``, holding it for ``lease_s``.

        One statement, so one round trip on PostgreSQL (``Database.statement``); not waited
        onto SQLite's disk (a claim lost to a power cut leaves the job queued). Cheap when
        there is nothing to take: every idle worker tries at each wake-up. A job past its start
        deadline is skipped. Jobs of dead workers come back, and late ones end, in the reaping
        round (``requeue_abandoned``), which workers and housekeeping run now and then.
        """
        with self.db.statement(durable=False) as conn:  # lost to a power cut: queued again
            return self._claim(conn, NextClaim(owner, lease_s, endpoints))

    def _claim(self, conn: Connection, claimant: NextClaim) -> Claim | None:
        now = time.time()
        row = conn.execute(
            _START_NEXT,
            {
                "endpoints": list(claimant.endpoints),
                "v_owner": claimant.owner,
                "v_now": now,
                "v_lease_s": claimant.lease_s,
            },
        ).first()
        if row is None:
            return None
        job = Job.from_row(row)
        return Claim(job, job.lease_token, more=bool(row.more_queued))

    def renew(self, job_id: str, token: int, lease_s: float) -> bool:
        """Extend the lease; False when it is no longer this worker's job."""
        with self.db.write(durable=False) as conn:
            done = conn.execute(
                _RENEW,
                {"h_id": job_id, "h_token": token, "v_expires_at": time.time() + lease_s},
            )
        return done.rowcount == 1

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked to cancel this job."""
        with self.db.read() as conn:
            return bool(conn.scalar(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)))

    def log(self, job_id: str, token: int, lines: Sequence[LogEntry]) -> bool:
        """Append log lines in one transaction, if the job is still this worker's (progress:
        not waited onto the disk, ``Database.write``)."""
        with self.db.write(durable=False) as conn:
            held = conn.scalar(_HELD_ID, {"h_id": job_id, "h_token": token})
            if held is None:
                return False
            self._append_logs(conn, job_id, lines)
        return True

    @staticmethod
    def _append_logs(conn: Connection, job_id: str, lines: Sequence[LogEntry]) -> None:
        if lines:
            conn.execute(
                _INSERT_LOGS,
                [{"job_id": job_id, "at": at, "level": "INFO", "message": m} for at, m in lines],
            )

    def complete(
        self,
        job_id: str,
        token: int,
        output: dict[str, Any],
        inference_time_s: float,
        *,
        logs: Sequence[LogEntry] = (),
        output_file: FileRecord | None = None,
        claim_next: NextClaim | None = None,
    ) -> Completed | None:
        """Record the output, in one transaction with the last log lines and the output file's
        record; None (nothing written) when the lease was lost.

        With ``claim_next``, the worker's next job is claimed in the same transaction (as
        ``claim`` would): a worker that finishes a job asks for the next one in the same
        round trip. It is the answer's ``next``."""
        with self.db.write() as conn:
            done = self._finish(
                conn, job_id, token, output=output, inference_time_s=inference_time_s
            )
            if not done:
                return None
            self._append_logs(conn, job_id, logs)
            if output_file is not None:
                conn.execute(_INSERT_FILE, dataclasses.asdict(output_file))
            if claim_next is None:
                return Completed()
            claimed = self._claim(conn, claim_next)
            if claimed is None and claim_next.mark_idle:
                conn.execute(MARK_IDLE, {"w_name": claim_next.owner, "v_since": time.time()})
            return Completed(claimed, looked=True)

    def counts(self) -> dict[tuple[str, str, int, str], int]:
        """Jobs by (state, endpoint, priority, outcome): outcome is "ok", an error_type, or ""
        while unfinished."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(
                    jobs.c.state, jobs.c.endpoint, jobs.c.priority, jobs.c.error_type, func.count()
                ).group_by(jobs.c.state, jobs.c.endpoint, jobs.c.priority, jobs.c.error_type)
            ).all()
        out: dict[tuple[str, str, int, str], int] = {}
        for state, endpoint, priority, error_type, count in rows:
            outcome = (error_type or "ok") if state == JobState.completed else ""
            key = (state, endpoint, int(priority), outcome)
            out[key] = out.get(key, 0) + int(count)
        return out

    def fail(
        self,
        job_id: str,
        token: int,
        failure: Failure,
        inference_time_s: float | None = None,
        *,
        logs: Sequence[LogEntry] = (),
    ) -> bool:
        """Record a failure with the last log lines; False (and nothing written) when the lease
        was lost."""
        with self.db.write() as conn:
            done = self._finish(
                conn, job_id, token, failure=failure, inference_time_s=inference_time_s
            )
            if done:
                self._append_logs(conn, job_id, logs)
            return done

    def release(
        self,
        job_id: str,
        token: int,
        *,
        count_attempt: bool = True,
        logs: Sequence[LogEntry] = (),
    ) -> bool:
        """Hand a held job back to the queue (its worker is shutting down), with its last log
        lines; with ``count_attempt`` False its claim does not count as a try (a store was
        away)."""
        attempts = jobs.c.attempts if count_attempt else jobs.c.attempts - 1
        with self.db.write() as conn:
            done = conn.execute(
                update(jobs)
                .where(_HELD)
                .values(
                    state=JobState.queued.value,
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=attempts,
                ),
                {"h_id": job_id, "h_token": token},
            )
            if done.rowcount == 1:
                self._append_logs(conn, job_id, logs)
                self.db.notify(conn, WAKE_CHANNEL)
        return done.rowcount == 1

    def hand_back(self, job_id: str, token: int, reason: str) -> bool:
        """Hand a held job back after its worker's GPU failed under it (``reason``, logged in
        the job). The attempt is not the job's fault the first time; if a GPU failed under it
        before, on another worker, it counts, and the job ends after its attempts."""
        now = time.time()
        this = and_(
            jobs.c.id == job_id, jobs.c.lease_token == token, jobs.c.state == JobState.running.value
        )  # _HELD with its values: _requeue_or_give_up takes a clause
        with self.db.write() as conn:
            held = conn.scalar(select(jobs.c.attempts).where(this))
            if held is None:
                return False
            earlier = conn.scalar(
                select(func.count())
                .select_from(job_logs)
                .where(job_logs.c.job_id == job_id, job_logs.c.message.startswith(GPU_FAULT))
            )
            conn.execute(
                insert(job_logs).values(
                    job_id=job_id,
                    at=now,
                    level="WARNING",
                    message=f"{GPU_FAULT} under this request ({reason}); back to the queue",
                )
            )
            if not earlier:
                conn.execute(update(jobs).where(this).values(attempts=held - 1))
            self._requeue_or_give_up(conn, this, now)
        return True

    def requeue_abandoned(self) -> int:
        """The reaping round, in one transaction. Every running job whose worker is gone: those
        of this host's dead workers (at once), then those whose lease expired; and every queued
        job past its start deadline, ended as ``RequestTimeout``. How many went back to the
        queue or ended."""
        now = time.time()
        with self.db.write() as conn:
            return (
                self._requeue_dead_holders(conn, now)
                + self._reap(conn, now)
                + self._expire_start_deadlines(conn, now)
            )

    def reap(self, now: float | None = None) -> int:
        """Jobs whose worker stopped renewing: back to the queue, or ended after max attempts."""
        with self.db.write() as conn:
            return self._reap(conn, time.time() if now is None else now)

    def _reap(self, conn: Connection, now: float) -> int:
        expired = and_(jobs.c.state == JobState.running.value, jobs.c.lease_expires_at < now)
        return self._requeue_or_give_up(conn, expired, now)

    def expire_start_deadlines(self, now: float | None = None) -> int:
        """End every queued job past its start deadline (``X-Fal-Request-Timeout``); none is
        claimed meanwhile. How many ended."""
        with self.db.write() as conn:
            return self._expire_start_deadlines(conn, time.time() if now is None else now)

    def _expire_start_deadlines(self, conn: Connection, now: float) -> int:
        late = conn.scalars(_PAST_START_DEADLINE, {"v_now": now}).all()
        for job_id in late:
            self._finish(conn, job_id, None, failure=Failure.of(RequestTimeout()), now=now)
        return len(late)

    def requeue_dead_holders(self, now: float | None = None) -> int:
        """Jobs whose worker ran on this host and is gone (its pid free, or another process):
        back to the queue now, or ended after max attempts, as if their lease had expired.

        Only this host's workers are judged (``fastsvd.processes``): one elsewhere, or one whose
        identity is unknown, might be alive, and keeps its jobs until their lease expires. The
        dead workers' rows are deleted. Workers starting together requeue a job once: the
        registry rows and the jobs are locked (SQLite: the write lock), and a job is only taken
        from the holder it was judged for. Returns how many jobs were requeued or ended.
        """
        with self.db.write() as conn:
            return self._requeue_dead_holders(conn, time.time() if now is None else now)

    def _requeue_dead_holders(self, conn: Connection, now: float) -> int:
        here = processes.host_id()
        if here is None:
            return 0
        rows = conn.execute(
            select(workers.c.name, workers.c.pid, workers.c.start_ticks)
            .where(workers.c.host_id == here, workers.c.start_ticks.is_not(None))
            .order_by(workers.c.name)
            .with_for_update(skip_locked=True)
        ).all()
        dead = [
            row
            for row in rows
            if processes.is_gone(processes.ProcessIdentity(here, row.pid, row.start_ticks))
        ]
        if not dead:
            return 0
        names = [row.name for row in dead]
        held = and_(jobs.c.state == JobState.running.value, jobs.c.lease_owner.in_(names))
        done = self._requeue_or_give_up(conn, held, now)
        for row in dead:
            conn.execute(
                delete(workers).where(
                    workers.c.name == row.name,
                    workers.c.pid == row.pid,
                    workers.c.start_ticks == row.start_ticks,
                )
            )
        return done

    def _requeue_or_give_up(self, conn: Connection, lost: Any, now: float) -> int:
        """The running jobs matching ``lost`` (their holder stopped): back to the queue, or
        ended as ``WorkerLost`` once they used their attempts (counted at claim) or when their
        submitter asked for no retry (``x-fal-no-retry``)."""
        # Locked in order, skipping rows another reaper holds: reapers never deadlock.
        rows = conn.execute(
            select(jobs.c.id, jobs.c.attempts, jobs.c.no_retry)
            .where(lost)
            .order_by(jobs.c.seq)
            .with_for_update(skip_locked=True)
        ).all()
        requeued = False
        for row in rows:
            if row.no_retry or row.attempts >= self.max_attempts:
                why = (
                    ", and x-fal-no-retry asked for no retry"
                    if row.no_retry
                    else f" {row.attempts} times; giving up"
                )
                ended = WorkerLost(f"The worker running this request stopped{why}")
                self._finish(conn, row.id, None, failure=Failure.of(ended), now=now)
            else:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == row.id, lost)
                    .values(state=JobState.queued.value, lease_owner=None, lease_expires_at=None)
                )
                requeued = True
        if requeued:
            self.db.notify(conn, WAKE_CHANNEL)
        return len(rows)

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def _get(conn: Connection, job_id: str) -> Job:
        return Job.from_row(conn.execute(select(jobs).where(jobs.c.id == job_id)).one())

    def _finish(
        self,
        conn: Connection,
        job_id: str,
        token: int | None,
        *,
        output: dict[str, Any] | None = None,
        failure: Failure | None = None,
        inference_time_s: float | None = None,
        now: float | None = None,
    ) -> bool:
        """Make a job completed; with a token, only if the caller still holds it."""
        done = conn.execute(
            _FINISH_HELD if token is not None else _FINISH_UNFINISHED,
            {
                "h_id": job_id,
                "h_token": token,
                "v_finished_at": time.time() if now is None else now,
                "v_output": json.dumps(output, separators=(",", ":"))
                if output is not None
                else None,
                "v_error": failure.message if failure else None,
                "v_error_type": failure.error_type if failure else None,
                "v_http_status": failure.http_status if failure else None,
                "v_inference_time_s": inference_time_s,
            },
        )
        return done.rowcount == 1
