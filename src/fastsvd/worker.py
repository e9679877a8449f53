"""The worker: loads the model once, then claims jobs one at a time and runs them.

Each job runs under a lease that a heartbeat thread renews; if the lease is lost (the worker
stalled, the job was handed on) the job's hooks ask the pipeline to stop and nothing more is
written. Cancels are checked before every step. A worker that dies mid-job leaves its lease to
expire, and the store gives the job to another worker (or ends it after ``max_attempts``); a
worker on the same host hands it on sooner, when it starts or in its reaping rounds, once it can
tell that the holder's process is gone (``JobStore.requeue_dead_holders``).

When the database goes away (a restart, a fail-over) the worker keeps what it has: an idle one
retries with backoff, a running job keeps running while its lease may still hold, and its result
is written once the database is back (the write is fenced, so retrying it is safe).

The file storage is waited out the same way: the first-frame preview is skipped while it is
away, the video is written once it is back (or, after ``outage_wait_s``, the request fails as
``storage_unavailable``), a job whose input cannot be read is handed back with its attempt not
counted, and no new job is claimed until the storage answers again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from PIL import Image
from pydantic import ValidationError

from fastsvd import constants as c
from fastsvd import media
from fastsvd.endpoints import ENDPOINTS, Registry
from fastsvd.errors import (
    FastSVDError,
    GenerationCancelled,
    GpuFault,
    InvalidInput,
    StorageUnavailable,
    StoreUnavailable,
    Unavailable,
    http_status,
)
from fastsvd.hooks import Hooks, StageClock, StepEvent
from fastsvd.net.fetch import fetch
from fastsvd.progress import first_frame_line, step_line
from fastsvd.retry import Outage, until_available
from fastsvd.runner import Runner
from fastsvd.schema import File, VideoOutput, field_errors, resolve_seed
from fastsvd.storage import Storage
from fastsvd.store.files import FileRecord, FileStore, new_file_id, new_record
from fastsvd.store.jobs import CANCELLED, Claim, Failure, Job, JobStore, LogEntry
from fastsvd.store.workers import WorkerRoster
from fastsvd.telemetry import WorkerMetrics
from fastsvd.wakeup import Listener, NoSignals

if TYPE_CHECKING:
    from fastsvd.services import Services

log = logging.getLogger("fastsvd.worker")

T = TypeVar("T")
REAP_EVERY_S = 5.0  # how often a worker looks for jobs of dead workers (also: housekeeping)
# A job's progress lines are kept in the worker and written together: at most this late (the
# heartbeat writes them), at once for the first frame, and with the result in its transaction.
LOG_FLUSH_S = 0.5


@dataclass
class WorkerServices:
    """What a worker talks to."""

    jobs: JobStore
    files: FileStore
    storage: Storage
    roster: WorkerRoster
    open_listener: Callable[[str], Listener]  # by worker name: wake-ups and cancels
    lease_s: float
    retention_s: float
    idle_poll_s: float
    outage_wait_s: float = 300.0  # how long a finished job waits for the file storage

    @classmethod
    def from_services(cls, services: Services) -> WorkerServices:
        """The stores ``services`` opened, with the worker's timings from its settings."""
        settings = services.settings
        return cls(
            jobs=services.jobs,
            files=services.files,
            storage=services.storage,
            roster=services.roster,
            open_listener=services.open_listener,
            lease_s=settings.lease_s,
            retention_s=settings.retention_s,
            idle_poll_s=settings.idle_poll_s,
            outage_wait_s=settings.outage_wait_s,
        )


def worker_name() -> str:
    """A name unique on this machine and readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """Runs jobs from the store through a ``Runner``."""

    def __init__(
        self,
        services: WorkerServices,
        runner: Runner,
        name: str | None = None,
        endpoints: Registry = ENDPOINTS,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.s = services
        self.metrics = metrics or WorkerMetrics()
        self.runner = runner
        self.name = name or worker_name()
        # what this worker claims: the endpoints whose capability its runner has
        self.endpoints = Registry(endpoints.with_capabilities(runner.capabilities))
        if not len(self.endpoints):
            raise FastSVDError(
                f"the runner can run none of the endpoints ({', '.join(endpoints.ids())})"
            )
        self.stopping = threading.Event()  # finish the current job, then exit
        self.abort = threading.Event()  # stop the current job at its next step
        self.listener: Listener = NoSignals()  # until ``serve`` opens the real one
        self.outage = Outage(log)  # the job store or the file storage is away
        self.gpu_fault: GpuFault | None = None  # set: the job went back, this process must go

    def drain(self, within_s: float | None = None) -> None:
        """Stop claiming; the current job finishes, or, past ``within_s`` seconds, stops at its
        next step and goes back to the queue (``abort``). ``serve`` then returns."""
        self.stopping.set()
        self.listener.wake()
        if within_s is not None:
            timer = threading.Timer(within_s, self.abort.set)
            timer.daemon = True
            timer.start()

    def serve(self, *, burst: bool = False) -> int:
        """Load the model, then run jobs until ``stopping`` (or, with ``burst``, the queue is
        empty). Returns how many jobs it ran."""
        # Jobs of this host's dead workers (a crash, a kill -9 of the whole service) are queued
        # again now, not when their lease expires; before registering, so that a dead worker
        # whose pid this process reuses (and so its name) is judged by its own start time.
        self.s.jobs.requeue_abandoned()
        self.s.roster.register(self.name, endpoints=self.endpoints.ids())
        self.runner.load()
        self.s.roster.beat(self.name, ready=True)
        self.metrics.serving(self.endpoints.ids())
        self.listener = self.s.open_listener(self.name)
        log.info("worker %s ready", self.name)
        ran = 0
        last_beat = last_reap = time.monotonic()
        reap_every_s = min(REAP_EVERY_S, self.s.lease_s / 2)
        claimable = self.endpoints.ids()

        def next_claim() -> Claim | None:
            nonlocal last_beat, last_reap
            if self.outage.down:  # no new job until the storage answers again
                self.s.storage.check()
            if time.monotonic() - last_reap > reap_every_s:
                self.s.jobs.requeue_abandoned()
                last_reap = time.monotonic()
            claim = self.s.jobs.claim(self.name, self.s.lease_s, claimable)
            if time.monotonic() - last_beat > self.s.lease_s / 3:
                self.s.roster.beat(self.name, ready=True)
                last_beat = time.monotonic()
            return claim

        try:
            while not self.stopping.is_set():
                claim = until_available(
                    next_claim,
                    wait=self.stopping.wait,
                    give_up=self.stopping.is_set,
                    outage=self.outage,
                )
                if claim is None:
                    if burst or self.stopping.is_set():
                        break
                    if self.runner.idle():  # a piece of compilation; then look for jobs again
                        continue
                    # Idle until woken, the safety-net poll, or the next reaping round, whichever
                    # is first: nobody wakes us for a job whose lease just expired.
                    until_reap_s = last_reap + reap_every_s - time.monotonic()
                    self.listener.wait(max(0.0, min(self.s.idle_poll_s, until_reap_s)))
                else:
                    self.run(claim)
                    ran += 1
        finally:
            self.listener.close()
            self._until_written(lambda: self.s.roster.leave(self.name), deadline=5.0)
        return ran

    def run(self, claim: Claim) -> None:
        """Run one claimed job to a final state (unless its lease is lost)."""
        ctx = JobContext(self, claim)
        heartbeat = threading.Thread(target=self._heartbeat, args=(ctx,), daemon=True)
        heartbeat.start()
        self.listener.watch(ctx.job.id)
        self.listener.pass_on()  # there may be more queued: another idle worker looks
        job = ctx.job
        log.info("job started", extra={"request_id": job.id, "attempt": job.attempts})
        mp4: bytes | None = None
        self.metrics.started(job.endpoint, (job.started_at or job.created_at) - job.created_at)
        try:
            endpoint = self.endpoints[job.endpoint]
            request = endpoint.input.model_validate(job.input)
            seed = resolve_seed(getattr(request, "seed", None))
            ctx.log(f"seed {seed}")
            mp4 = self.runner.run(endpoint.capability, request, seed, ctx.hooks())
            if ctx.complete(mp4, seed):
                self.metrics.finished(job.endpoint, ctx.stage_seconds)
                log.info("job completed", extra={"request_id": job.id, "seconds": ctx.elapsed_s})
            else:
                log.warning("job %s: lease lost before the result; result dropped", job.id)
        except Exception as exc:
            if ctx.lost.is_set():
                log.warning("job %s: lease lost; stopped without writing", job.id)
            elif isinstance(exc, GenerationCancelled) and self.abort.is_set():
                ctx.release()  # shutting down: another worker takes it
            elif isinstance(exc, GpuFault):
                self._hand_back(ctx, exc)
            elif isinstance(exc, Unavailable) and mp4 is None:  # its input could not be read
                self.outage.failed(exc.message)
                ctx.release(count_attempt=False)
            else:
                failure = failure_of(exc)
                ctx.fail(failure)
                log.info(
                    "job failed", extra={"request_id": job.id, "error_type": failure.error_type}
                )
        finally:
            ctx.done.set()
            heartbeat.join()
            self.listener.watch(None)

    def _hand_back(self, ctx: JobContext, fault: GpuFault) -> None:
        """The CUDA context is gone: every later job here would fail at once. The job goes
        back (not its fault, the first time) and this process stops, to be restarted fresh."""
        job = ctx.job
        log.error("job %s: %s; handing it back and exiting", job.id, fault.message)
        self._until_written(
            lambda: self.s.jobs.hand_back(job.id, ctx.token, fault.message), lost=ctx.lost
        )
        self.gpu_fault = fault
        self.stopping.set()

    def _heartbeat(self, ctx: JobContext) -> None:
        # The lease is ours until ``held_until``; while the database is away we keep running,
        # but once the lease may have expired someone else may hold the job: stop.
        job_id, lost = ctx.job.id, ctx.lost
        held_until = time.monotonic() + self.s.lease_s
        renew_every_s = self.s.lease_s / 3
        next_renewal = time.monotonic() + renew_every_s
        while not ctx.done.wait(min(LOG_FLUSH_S, renew_every_s)):
            ctx.flush_logs()
            if time.monotonic() < next_renewal:
                continue
            next_renewal = time.monotonic() + renew_every_s
            try:
                renewed = self.s.jobs.renew(job_id, ctx.token, self.s.lease_s)
            except StoreUnavailable:
                if time.monotonic() >= held_until:
                    log.warning("job %s: database away past the lease; stopping", job_id)
                    lost.set()
                    return
                continue
            if not renewed:
                lost.set()
                return
            held_until = time.monotonic() + self.s.lease_s

    def _until_written(
        self, write: Callable[[], T], *, lost: threading.Event | None = None, deadline: float = 0
    ) -> T | None:
        """``write()``, retried while the job store is unavailable: until it works, or None
        once the lease is lost (``lost``) or ``deadline`` seconds pass (0: never)."""
        give_up_at = time.monotonic() + deadline if deadline else None

        def give_up() -> bool:
            return (lost is not None and lost.is_set()) or (
                give_up_at is not None and time.monotonic() > give_up_at
            )

        return until_available(write, give_up=give_up, outage=self.outage)

    @staticmethod
    def _best_effort(read: Callable[[], T]) -> T | None:
        """``read()``, or None while a store is unavailable (logs, cancel checks, previews)."""
        try:
            return read()
        except Unavailable:
            return None

    def _put_file(
        self, job: Job, kind: str, file_name: str, content_type: str, data: bytes
    ) -> FileRecord:
        """Store the bytes; returns their record, for the caller to write after them (a record
        never points at nothing). The file lives as long as the request asked
        (X-Fal-Object-Lifecycle-Preference), else the retention."""
        lifetime_s = job.output_lifetime_s
        record = new_record(
            key_id=job.key_id,
            kind=kind,
            file_name=file_name,
            content_type=content_type,
            size=len(data),
            retention_s=lifetime_s if lifetime_s is not None else self.s.retention_s,
            file_id=new_file_id(),
        )
        self.s.storage.put(record.id, data, content_type)
        return record

    def _store_preview(self, job: Job, image: Image.Image) -> str:
        jpeg = media.encode_jpeg(image)
        record = self._put_file(job, "preview", f"{job.id}-first-frame.jpg", "image/jpeg", jpeg)
        self.s.files.add(record)
        return (job.base_url or "") + record.path

    def _store_output(
        self, job: Job, mp4: bytes, seed: int
    ) -> tuple[dict[str, object], FileRecord]:
        """The video's bytes stored; its fal output and its record, written with the result."""
        record = self._put_file(job, "output", f"{job.id}.mp4", c.VIDEO_CONTENT_TYPE, mp4)
        file = File(
            url=record.path,  # relative: the API makes it absolute for whoever asks
            content_type=record.content_type,
            file_name=record.file_name,
            file_size=record.size,
        )
        return VideoOutput(video=file, seed=seed).model_dump(mode="json"), record


class JobContext:
    """One claimed job while it runs: its lease, its log, its cancel checks, its first frame,
    its stage timings and its final write. Every write is fenced by the claim's token."""

    def __init__(self, worker: Worker, claim: Claim) -> None:
        self.worker = worker
        self.s = worker.s
        self.job = claim.job
        self.token = claim.token
        self.lost = threading.Event()  # the lease is gone: stop, write nothing
        self.done = threading.Event()  # the job has ended here (the heartbeat stops)
        self.started = time.perf_counter()
        self.clock = StageClock(
            Hooks(
                on_step=self.on_step, should_cancel=self.should_cancel, on_first_frame=self.on_frame
            )
        )
        # Pushed cancels (PostgreSQL) are heard at once; the flag in the database is still
        # read now and then, in case a notification was missed. Without them, as often as the
        # progress lines are written.
        self._poll_s = c.CANCEL_POLL_S if worker.listener.pushes_cancels else LOG_FLUSH_S
        self._next_poll = 0.0
        self._lines: list[LogEntry] = []  # not yet written (``flush_logs``)
        self._lines_lock = threading.Lock()  # held while lines are taken and written, in order

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def hooks(self) -> Hooks:
        """The hooks the runner calls, timing the stages; they count from now."""
        self.clock.restart()
        return self.clock.hooks

    @property
    def stage_seconds(self) -> dict[str, float]:
        return {str(stage): seconds for stage, seconds in self.clock.timings_s.items()}

    def log(self, line: str) -> None:
        """A line of the request's log: written within ``LOG_FLUSH_S`` by the heartbeat, or
        with the job's final write, whichever is first."""
        with self._lines_lock:
            self._lines.append((time.time(), line))

    def flush_logs(self) -> None:
        """Write the lines logged so far (dropped while the job store is away)."""
        with self._lines_lock:
            lines, self._lines = self._lines, []
            if lines:
                self.worker._best_effort(lambda: self.s.jobs.log(self.job.id, self.token, lines))

    def _last_lines(self) -> list[LogEntry]:
        """The lines not written yet, for the job's final write (taken once)."""
        with self._lines_lock:
            lines, self._lines = self._lines, []
        return lines

    def on_step(self, event: StepEvent) -> None:
        self.log(step_line(event))

    def should_cancel(self) -> bool:
        w = self.worker
        if self.lost.is_set() or w.abort.is_set() or w.listener.cancelled(self.job.id):
            return True
        now = time.monotonic()
        if now < self._next_poll:
            return False
        self._next_poll = now + self._poll_s
        return w._best_effort(lambda: self.s.jobs.cancel_requested(self.job.id)) is True

    def on_frame(self, image: Image.Image) -> None:
        # Shown to whoever watches the logs while the video is still being made; skipped
        # (the outage noted, so no new job is claimed) while a store is away.
        try:
            url = self.worker._store_preview(self.job, image)
        except Unavailable as exc:
            self.worker.outage.failed(exc.message)
            return
        self.log(first_frame_line(url))
        self.flush_logs()  # the preview is shown now, not with the next batch

    def complete(self, mp4: bytes, seed: int) -> bool:
        """Store the video and record the result; False when the lease was lost first.
        Raises ``StorageUnavailable`` when the video could not be stored for ``outage_wait_s``."""
        w, job = self.worker, self.job
        stored = w._until_written(
            lambda: w._store_output(job, mp4, seed),
            lost=self.lost,
            deadline=self.s.outage_wait_s,
        )
        if stored is None:
            if not self.lost.is_set():
                raise self.storage_gone()  # the request fails as storage_unavailable
            return False
        output, record = stored
        elapsed, lines = self.elapsed_s, self._last_lines()
        written = w._until_written(
            lambda: self.s.jobs.complete(
                job.id,
                self.token,
                output,
                elapsed,
                self.stage_seconds,
                logs=lines,
                output_file=record,
            ),
            lost=self.lost,
        )
        return bool(written)

    def fail(self, failure: Failure) -> None:
        elapsed, lines = self.elapsed_s, self._last_lines()
        self.worker._until_written(
            lambda: self.s.jobs.fail(self.job.id, self.token, failure, elapsed, logs=lines),
            lost=self.lost,
        )

    def storage_gone(self) -> StorageUnavailable:
        """The error of a video that could not be stored for ``outage_wait_s``."""
        reason = self.worker.outage.what or "the file storage is unavailable"
        return StorageUnavailable(
            f"{reason}; the video was not stored after {self.s.outage_wait_s:.0f} s of retries"
        )

    def release(self, *, count_attempt: bool = True) -> None:
        """Hand the job back to the queue (this worker is shutting down, or could not read the
        job's input while a store was away: then the attempt is not counted)."""
        lines = self._last_lines()
        self.worker._until_written(
            lambda: self.s.jobs.release(
                self.job.id, self.token, count_attempt=count_attempt, logs=lines
            ),
            lost=self.lost,
        )


def image_loader(
    files: FileStore, storage: Storage, *, allow_private: bool = False
) -> Callable[[str], Image.Image]:
    """Reads ``image_url``: a data: URI, a file uploaded to this server, or a public URL."""

    def load(url: str) -> Image.Image:
        if url.startswith("data:"):
            return media.decode_data_uri_image(url)
        parts = urllib.parse.urlsplit(url).path.split("/")
        if len(parts) >= 3 and parts[1] == "files" and parts[2].isalnum():
            record = files.get(parts[2])
            if record is not None and storage.exists(record.id):
                return media.decode_image(storage.read(record.id))
        _content_type, data = fetch(url, "image_url", allow_private=allow_private)
        return media.decode_image(data)

    return load


def failure_of(exc: BaseException) -> Failure:
    """How an exception from a job is reported to the client: its message, fal error type and
    HTTP status, from the error tree's table."""
    if isinstance(exc, GenerationCancelled):
        return CANCELLED
    if isinstance(exc, ValidationError):
        field, message = field_errors(exc)[0]
        exc = InvalidInput(field, message)
    if isinstance(exc, FastSVDError):
        return Failure(exc.message, exc.error_type, http_status(exc))
    log.exception("job failed", exc_info=exc)
    return Failure(f"internal error: {type(exc).__name__}", "internal_error", 500)
