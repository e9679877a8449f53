"""One claimed job while it runs: what it is, what it talks to, and the job's own work.

A ``JobContext`` is frozen data (the job, its claim's token, the stores, the worker's listener,
outage and abort flag) plus the job's work: it keeps its lease (``beat``, from the worker's
heartbeat thread), logs, answers ``should_abort`` before every step, stores its first frame and
its video, and writes its end (``complete``, ``fail``, ``release``, ``hand_back``). Every write
is fenced by the claim's token, so a job whose lease was lost writes nothing. It holds no
reference to the worker that claimed it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from PIL import Image

from fastsvd import constants as c
from fastsvd import media
from fastsvd.errors import (
    Failure,
    StorageUnavailable,
    StoreUnavailable,
    Unavailable,
)
from fastsvd.hooks import Hooks, StageClock, StepEvent
from fastsvd.periodic import Every
from fastsvd.progress import first_frame_line, step_line
from fastsvd.retry import Outage, best_effort, until_written
from fastsvd.schema import File, VideoOutput
from fastsvd.services import Services
from fastsvd.store.files import FileRecord, new_file_id, new_record
from fastsvd.store.jobs import Completed, Job, LogEntry, NextClaim
from fastsvd.wakeup import Listener

log = logging.getLogger("fastsvd.worker")

T = TypeVar("T")


@dataclass
class _Lease:
    """When the job's lease is next renewed, and until when it is known to hold."""

    next_renewal: float
    held_until: float


class _Lines:
    """The progress lines not written yet, taken in order under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while lines are taken and written, in order
        self.pending: list[LogEntry] = []

    def take(self) -> list[LogEntry]:
        """The lines so far, for the caller to write (they are taken once); hold ``lock``."""
        lines, self.pending = self.pending, []
        return lines


@dataclass(frozen=True)
class JobContext:
    """One claimed job while it runs. ``aborting`` is the worker's: set, the job stops at its
    next step (a drain past its deadline)."""

    job: Job
    token: int  # the claim's fencing token
    services: Services
    listener: Listener  # the worker's: pushed cancels and wake-ups
    outage: Outage  # the worker's: no new job is claimed while a store is away
    aborting: threading.Event
    lost: threading.Event = field(default_factory=threading.Event)  # stop, write nothing
    done: threading.Event = field(default_factory=threading.Event)  # ended here: no heartbeat
    started: float = field(default_factory=time.perf_counter)
    _lines: _Lines = field(default_factory=_Lines)
    _cancel_poll: Every = field(init=False)
    _lease: _Lease = field(init=False)
    _clock: StageClock = field(init=False)

    def __post_init__(self) -> None:
        # Pushed cancels (PostgreSQL) are heard at once; the flag in the database is still
        # read now and then, in case a notification was missed. Without them, as often as the
        # progress lines are written. The first read is one period after the claim, which has
        # just read the flag (a job cancelled while queued is never claimed).
        poll_s = c.CANCEL_POLL_S if self.listener.pushes_cancels else c.LOG_FLUSH_S
        object.__setattr__(self, "_cancel_poll", Every(poll_s))
        lease_s = self.services.settings.lease_s
        claimed = time.monotonic()
        object.__setattr__(
            self, "_lease", _Lease(claimed + lease_s / c.RENEWALS_PER_LEASE, claimed + lease_s)
        )
        hooks = Hooks(
            on_step=self.on_step, should_cancel=self.should_abort, on_first_frame=self.on_frame
        )
        object.__setattr__(self, "_clock", StageClock(hooks))

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def hooks(self) -> Hooks:
        """The hooks the runner calls, timing the stages; they count from now."""
        self._clock.restart()
        return self._clock.hooks

    @property
    def stage_seconds(self) -> dict[str, float]:
        return {str(stage): seconds for stage, seconds in self._clock.timings_s.items()}

    def should_abort(self) -> bool:
        """Whether the job should stop at this step: its lease is lost, the worker is aborting
        it, or its cancel was asked for (heard, or read from the store now and then)."""
        if self.lost.is_set() or self.aborting.is_set() or self.listener.cancelled(self.job.id):
            return True
        if not self._cancel_poll.due():
            return False
        jobs = self.services.jobs
        return best_effort(lambda: jobs.cancel_requested(self.job.id)) is True

    def beat(self) -> None:
        """The heartbeat's turn, every ``LOG_FLUSH_S``: write the progress lines, and renew the
        lease when a renewal is due. While the database is away the job keeps running, but once
        the lease may have expired someone else may hold the job: then ``lost`` is set (the job
        stops at its next step, and writes nothing)."""
        self.flush_logs()
        lease = self._lease
        if time.monotonic() < lease.next_renewal:
            return
        lease_s = self.services.settings.lease_s
        lease.next_renewal = time.monotonic() + lease_s / c.RENEWALS_PER_LEASE
        try:
            renewed = self.services.jobs.renew(self.job.id, self.token, lease_s)
        except StoreUnavailable:
            if time.monotonic() >= lease.held_until:
                log.warning("job %s: database away past the lease; stopping", self.job.id)
                self.lost.set()
            return
        if not renewed:
            self.lost.set()
            return
        lease.held_until = time.monotonic() + lease_s

    def log(self, line: str) -> None:
        """A line of the request's log: written within ``LOG_FLUSH_S`` by the heartbeat, or
        with the job's final write, whichever is first."""
        with self._lines.lock:
            self._lines.pending.append((time.time(), line))

    def flush_logs(self) -> None:
        """Write the lines logged so far (dropped while the job store is away)."""
        with self._lines.lock:
            lines = self._lines.take()
            if lines:
                best_effort(lambda: self.services.jobs.log(self.job.id, self.token, lines))

    def _last_lines(self) -> list[LogEntry]:
        """The lines not written yet, for the job's final write (taken once)."""
        with self._lines.lock:
            return self._lines.take()

    def on_step(self, event: StepEvent) -> None:
        self.log(step_line(event))

    def on_frame(self, image: Image.Image) -> None:
        # Shown to whoever watches the logs while the video is still being made; skipped
        # (the outage noted, so no new job is claimed) while a store is away.
        try:
            url = self._store_preview(image)
        except Unavailable as exc:
            self.outage.failed(exc.message)
            return
        self.log(first_frame_line(url))
        self.flush_logs()  # the preview is shown now, not with the next batch

    def complete(
        self, mp4: bytes, seed: int, *, claim_next: Callable[[], NextClaim | None]
    ) -> Completed | None:
        """Store the video and record the result, claiming the worker's next job with it
        (``claim_next`` says who claims, when the write is made); None when the lease was lost
        first. Raises ``StorageUnavailable`` when the video could not be stored for
        ``outage_wait_s``."""
        stored = until_written(
            lambda: self._store_output(mp4, seed),
            outage=self.outage,
            lost=self.lost,
            deadline_s=self.services.settings.outage_wait_s,
        )
        if stored is None:
            if not self.lost.is_set():
                raise self.storage_gone()  # the request fails as storage_unavailable
            return None
        output, record = stored
        elapsed, lines = self.elapsed_s, self._last_lines()
        return self._until_written(
            lambda: self.services.jobs.complete(
                self.job.id,
                self.token,
                output,
                elapsed,
                logs=lines,
                output_file=record,
                claim_next=claim_next(),
            )
        )

    def fail(self, failure: Failure) -> None:
        elapsed, lines = self.elapsed_s, self._last_lines()
        self._until_written(
            lambda: self.services.jobs.fail(self.job.id, self.token, failure, elapsed, logs=lines)
        )

    def storage_gone(self) -> StorageUnavailable:
        """The error of a video that could not be stored for ``outage_wait_s``."""
        reason = self.outage.what or "the file storage is unavailable"
        wait_s = self.services.settings.outage_wait_s
        return StorageUnavailable(
            f"{reason}; the video was not stored after {wait_s:.0f} s of retries"
        )

    def release(self, *, count_attempt: bool = True) -> None:
        """Hand the job back to the queue (the worker is shutting down, or could not read the
        job's input while a store was away: then the attempt is not counted)."""
        lines = self._last_lines()
        self._until_written(
            lambda: self.services.jobs.release(
                self.job.id, self.token, count_attempt=count_attempt, logs=lines
            )
        )

    def hand_back(self, reason: str) -> None:
        """Give the job back without counting its attempt, ``reason`` in its log (the GPU
        faulted under it: not the job's fault, the first time)."""
        self._until_written(lambda: self.services.jobs.hand_back(self.job.id, self.token, reason))

    def _until_written(self, write: Callable[[], T]) -> T | None:
        return until_written(write, outage=self.outage, lost=self.lost)

    def _put_file(self, kind: str, file_name: str, content_type: str, data: bytes) -> FileRecord:
        """Store the bytes; returns their record, for the caller to write after them (a record
        never points at nothing). The file lives as long as the request asked
        (X-Fal-Object-Lifecycle-Preference), else the retention."""
        lifetime_s = self.job.output_lifetime_s
        record = new_record(
            key_id=self.job.key_id,
            kind=kind,
            file_name=file_name,
            content_type=content_type,
            size=len(data),
            retention_s=(
                lifetime_s if lifetime_s is not None else self.services.settings.retention_s
            ),
            file_id=new_file_id(),
        )
        self.services.storage.put(record.id, data, content_type)
        return record

    def _store_preview(self, image: Image.Image) -> str:
        jpeg = media.encode_jpeg(image)
        name = f"{self.job.id}-first-frame.jpg"
        record = self._put_file("preview", name, "image/jpeg", jpeg)
        self.services.files.add(record)
        return (self.job.base_url or "") + record.path

    def _store_output(self, mp4: bytes, seed: int) -> tuple[dict[str, object], FileRecord]:
        """The video's bytes stored; its fal output and its record, written with the result."""
        name = f"{self.job.id}.mp4"
        record = self._put_file("output", name, c.VIDEO_CONTENT_TYPE, mp4)
        file = File(
            url=record.path,  # relative: the API makes it absolute for whoever asks
            content_type=record.content_type,
            file_name=record.file_name,
            file_size=record.size,
        )
        return VideoOutput(video=file, seed=seed).model_dump(mode="json"), record
