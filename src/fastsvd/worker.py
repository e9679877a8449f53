"""The worker: loads the model once, then claims jobs one at a time and runs them.

Each job runs under a lease that the worker's heartbeat thread (one for its whole life) renews;
if the lease is lost (the worker stalled, the job was handed on) the job's hooks ask the pipeline
to stop and nothing more is written. Cancels are checked before every step. A worker that
finishes a job claims its next one in the transaction that records the result. A worker that
dies mid-job leaves its lease to expire, and the store gives the job to another worker (or ends
it after ``max_attempts``); a worker on the same host hands it on sooner, when it starts or in
its reaping rounds, once it can tell that the holder's process is gone
(``JobStore.requeue_dead_holders``).

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
from typing import TYPE_CHECKING

from pydantic import ValidationError

from fastsvd import constants as c
from fastsvd.endpoints import ENDPOINTS, Registry, configured
from fastsvd.errors import Failure, FastSVDError, GenerationCancelled, GpuFault, Unavailable
from fastsvd.inputs import image_loader
from fastsvd.job_context import JobContext
from fastsvd.retry import Outage, best_effort, until_available, until_written
from fastsvd.runner import Runner, make_runner
from fastsvd.schema import resolve_seed
from fastsvd.services import Services
from fastsvd.store.jobs import Claim, Completed, NextClaim
from fastsvd.telemetry import WorkerMetrics
from fastsvd.wakeup import Listener, NoSignals

if TYPE_CHECKING:
    from fastsvd.settings import Settings

log = logging.getLogger("fastsvd.worker")


def worker_name() -> str:
    """A name unique on this machine and readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """Runs jobs from the store through a ``Runner``."""

    def __init__(
        self,
        services: Services,
        runner: Runner,
        name: str | None = None,
        endpoints: Registry = ENDPOINTS,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.services = services
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
        # The job the heartbeat thread looks after (``_heartbeats``), None between jobs.
        self._current: JobContext | None = None
        self._heart: threading.Thread | None = None
        self._heart_stop = threading.Event()

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        services: Services | None = None,
        runner: Runner | None = None,
        endpoints: Registry | None = None,
        name: str | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> Worker:
        """The one composition of a worker: the stores ``settings`` name (waited for while
        down), their input reader, the runner ``settings`` ask for and the endpoints they
        configure. ``services``, ``runner`` and ``endpoints`` replace their part (tests, a
        process of several workers sharing one ``Services``).

        Raises ``FastSVDError`` when the runner can run none of the endpoints,
        ``CannotRunHere`` when the platform cannot run them."""
        if services is None:
            services = Services.from_settings(settings, wait=True)
        if endpoints is None:
            endpoints = configured(settings)
        if runner is None:
            load_image = image_loader(
                services.files, services.storage, allow_private=settings.allow_private_urls
            )
            runner = make_runner(settings, load_image, endpoints.needs())
        return cls(services, runner, name=name, endpoints=endpoints, metrics=metrics)

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
        self.services.jobs.requeue_abandoned()
        self.listener = self.services.open_listener(self.name)  # its channel is registered
        try:
            self.services.roster.register(
                self.name, endpoints=self.endpoints.ids(), wake_channel=self.listener.channel
            )
            self.runner.load()
        except BaseException:
            self.listener.close()
            raise
        self.services.roster.beat(self.name, ready=True)
        self.metrics.serving(self.endpoints.ids())
        log.info("worker %s ready", self.name)
        settings = self.services.settings
        lease_s = settings.lease_s
        ran = 0
        last_beat = time.monotonic()
        reaping = self.services.reaping  # one round a period for this process's workers
        claimable = self.endpoints.ids()

        def housekeeping() -> None:
            nonlocal last_beat
            if reaping.due():
                self.services.jobs.requeue_abandoned()
            if time.monotonic() - last_beat > lease_s / c.RENEWALS_PER_LEASE:
                self.services.roster.beat(self.name, ready=True)
                last_beat = time.monotonic()

        def next_claim() -> Claim | None:
            if self.outage.down:  # no new job until the storage answers again
                self.services.storage.check()
            housekeeping()
            return self.services.jobs.claim(self.name, lease_s, claimable)

        claim: Claim | None = None  # held: claimed with the last job's result
        looked = False  # the last result's claim found nothing: wait before looking again
        try:
            while not self.stopping.is_set():
                if claim is not None or looked:  # the result's claim just looked
                    best_effort(housekeeping)  # a held job does not wait for it
                else:
                    claim = until_available(
                        next_claim,
                        wait=self.stopping.wait,
                        give_up=self.stopping.is_set,
                        outage=self.outage,
                    )
                looked = False
                if claim is None:
                    if burst or self.stopping.is_set():
                        break
                    if self.runner.idle():  # a piece of compilation; then look for jobs again
                        continue
                    # Idle until woken, the safety-net poll, or the next reaping round, whichever
                    # is first: nobody wakes us for a job whose lease just expired.
                    self.listener.wait(min(settings.idle_poll_s, reaping.seconds_left()))
                else:
                    completed = self.run(claim)
                    ran += 1
                    claim = completed.next if completed else None
                    looked = completed is not None and completed.looked and claim is None
                    if looked:  # and marked idle, where the roster keeps that
                        self.listener.marked_idle()
            if claim is not None:  # claimed as the drain began: back to the queue, untried
                held = claim
                until_written(
                    lambda: self.services.jobs.release(
                        held.job.id, held.token, count_attempt=False
                    ),
                    outage=self.outage,
                    deadline_s=lease_s,
                )
        finally:
            self._stop_heartbeats()
            self.listener.close()
            until_written(
                lambda: self.services.roster.leave(self.name),
                outage=self.outage,
                deadline_s=c.LEAVE_DEADLINE_S,
            )
        return ran

    def next_claimant(self) -> NextClaim | None:
        """Who claims the next job with this one's result; None when this worker must not
        take one now (it is stopping, or the file storage is away)."""
        if self.stopping.is_set() or self.outage.down:
            return None
        settings = self.services.settings
        return NextClaim(
            self.name, settings.lease_s, self.endpoints.ids(), mark_idle=self.listener.marks_idle
        )

    def run(self, claim: Claim) -> Completed | None:
        """Run one claimed job to a final state (unless its lease is lost). Returns its
        result's record, with the next job when one was claimed with it; None when it
        ended otherwise."""
        ctx = JobContext(
            claim.job, claim.token, self.services, self.listener, self.outage, self.abort
        )
        self._watch(ctx)
        self.listener.watch(ctx.job.id)
        if claim.more:  # more are queued: another idle worker looks
            self.listener.pass_on()
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
            completed = ctx.complete(mp4, seed, claim_next=self.next_claimant)
            if completed is not None:
                self.metrics.finished(job.endpoint, ctx.stage_seconds)
                log.info("job completed", extra={"request_id": job.id, "seconds": ctx.elapsed_s})
                return completed
            else:
                log.warning("job %s: lease lost before the result; result dropped", job.id)
        except Exception as exc:
            if ctx.lost.is_set():
                log.warning("job %s: lease lost; stopped without writing", job.id)
            elif isinstance(exc, GenerationCancelled) and self.abort.is_set():
                ctx.release()  # shutting down: another worker takes it
            elif isinstance(exc, GpuFault):
                # The CUDA context is gone: every later job here would fail at once. The job
                # goes back (not its fault, the first time) and this process stops, to be
                # restarted fresh.
                log.error("job %s: %s; handing it back and exiting", job.id, exc.message)
                ctx.hand_back(exc.message)
                self.gpu_fault = exc
                self.stopping.set()
            elif isinstance(exc, Unavailable) and mp4 is None:  # its input could not be read
                self.outage.failed(exc.message)
                ctx.release(count_attempt=False)
            else:
                if not isinstance(exc, FastSVDError | ValidationError):
                    log.exception("job failed", exc_info=exc)  # a bug: its trace is for us
                failure = Failure.of(exc)
                ctx.fail(failure)
                log.info(
                    "job failed", extra={"request_id": job.id, "error_type": failure.error_type}
                )
        finally:
            ctx.done.set()
            self._watch(None)
            self.listener.watch(None)
        return None

    def _watch(self, ctx: JobContext | None) -> None:
        """Hand the heartbeat thread the job now running (None: none); started with the first.
        The thread is not woken: it looks at its next tick (a job shorter than a tick costs it
        nothing)."""
        self._current = ctx
        if self._heart is None and ctx is not None:
            self._heart_stop.clear()
            self._heart = threading.Thread(
                target=self._heartbeats, name=f"heartbeat-{self.name}", daemon=True
            )
            self._heart.start()

    def _stop_heartbeats(self) -> None:
        heart, self._heart = self._heart, None
        self._heart_stop.set()
        if heart is not None:
            heart.join()

    def _heartbeats(self) -> None:
        """The heartbeat thread: one per worker, a tick every ``LOG_FLUSH_S`` (or a third of
        the lease, if shorter), keeping the lease of the job running then. A job that has ended
        here (``done``), or lost its lease, gets no more beats."""
        tick_s = min(c.LOG_FLUSH_S, self.services.settings.lease_s / c.RENEWALS_PER_LEASE)
        while not self._heart_stop.wait(tick_s):
            ctx = self._current
            if ctx is not None and not ctx.done.is_set() and not ctx.lost.is_set():
                try:
                    ctx.beat()
                except Exception:  # a bug: the next tick tries again, for this job and the next
                    log.exception("heartbeat failed", extra={"request_id": ctx.job.id})
