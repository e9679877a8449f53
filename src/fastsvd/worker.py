"""The worker: loads the model once, then claims jobs one at a time and runs them.

Each job runs under a lease that a heartbeat thread renews; if the lease is lost (the worker
stalled, the job was handed on) the job's hooks ask the pipeline to stop and nothing more is
written. Cancels are checked before every step. A worker that dies mid-job leaves its lease to
expire, and the store gives the job to another worker (or ends it after ``max_attempts``).
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

from PIL import Image
from pydantic import ValidationError

from fastsvd import constants as c
from fastsvd import media
from fastsvd.errors import FastSVDError, GenerationCancelled, InvalidInput, OutOfMemory
from fastsvd.fetch import fetch
from fastsvd.pipeline.hooks import Hooks, StepEvent
from fastsvd.runner import Runner
from fastsvd.schema import (
    File,
    ImageToVideoInput,
    TextToVideoInput,
    VideoOutput,
    field_errors,
    resolve_seed,
)
from fastsvd.storage import LocalStorage
from fastsvd.store.files import FileStore
from fastsvd.store.jobs import CANCELLED, Claim, Failure, JobStore
from fastsvd.store.workers import WorkerRegistry
from fastsvd.wakeup import WakeupListener

log = logging.getLogger("fastsvd.worker")

ENDPOINTS: dict[str, type[TextToVideoInput] | type[ImageToVideoInput]] = {
    c.TEXT_TO_VIDEO_ENDPOINT: TextToVideoInput,
    c.IMAGE_TO_VIDEO_ENDPOINT: ImageToVideoInput,
}


@dataclass
class WorkerServices:
    """What a worker talks to."""

    jobs: JobStore
    files: FileStore
    storage: LocalStorage
    registry: WorkerRegistry
    wake_folder: os.PathLike[str] | str
    lease_s: float
    retention_s: float
    idle_poll_s: float


def worker_name() -> str:
    """A name unique on this machine and readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """Runs jobs from the store through a ``Runner``."""

    def __init__(self, services: WorkerServices, runner: Runner, name: str | None = None) -> None:
        self.s = services
        self.runner = runner
        self.name = name or worker_name()
        self.stopping = threading.Event()  # finish the current job, then exit
        self.abort = threading.Event()  # stop the current job at its next step

    def serve(self, *, burst: bool = False) -> int:
        """Load the model, then run jobs until ``stopping`` (or, with ``burst``, the queue is
        empty). Returns how many jobs it ran."""
        from pathlib import Path

        self.s.registry.register(self.name)
        self.runner.load()
        self.s.registry.beat(self.name, ready=True)
        log.info("worker %s ready", self.name)
        listener = WakeupListener(Path(self.s.wake_folder), self.name)
        ran = 0
        last_beat = time.monotonic()
        try:
            while not self.stopping.is_set():
                claim = self.s.jobs.claim(self.name, self.s.lease_s, list(ENDPOINTS))
                if claim is None:
                    if burst:
                        break
                    listener.wait(self.s.idle_poll_s)
                else:
                    self.run(claim)
                    ran += 1
                if time.monotonic() - last_beat > self.s.lease_s / 3:
                    self.s.registry.beat(self.name, ready=True)
                    last_beat = time.monotonic()
        finally:
            listener.close()
            self.s.registry.leave(self.name)
        return ran

    def run(self, claim: Claim) -> None:
        """Run one claimed job to a final state (unless its lease is lost)."""
        job, token = claim.job, claim.token
        lost = threading.Event()
        done = threading.Event()
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(job.id, token, lost, done), daemon=True
        )
        heartbeat.start()
        started = time.perf_counter()
        log.info("job started", extra={"request_id": job.id, "attempt": job.attempts})
        try:
            request = ENDPOINTS[job.endpoint].model_validate(job.input)
            seed = resolve_seed(request.seed)
            self.s.jobs.log(job.id, token, f"seed {seed}")

            stage_seconds: dict[str, float] = {}
            mark = [time.perf_counter()]

            def on_step(event: StepEvent) -> None:
                now = time.perf_counter()
                stage_seconds[event.stage] = stage_seconds.get(event.stage, 0.0) + now - mark[0]
                mark[0] = now
                self.s.jobs.log(job.id, token, f"{event.stage}: step {event.step}/{event.total}")

            def should_cancel() -> bool:
                return lost.is_set() or self.abort.is_set() or self.s.jobs.cancel_requested(job.id)

            mp4 = self.runner.run(
                request, seed, Hooks(on_step=on_step, should_cancel=should_cancel)
            )
            output = self._store_output(job.key_id, job.id, mp4, seed)
            elapsed = time.perf_counter() - started
            if self.s.jobs.complete(job.id, token, output, elapsed, stage_seconds):
                log.info("job completed", extra={"request_id": job.id, "seconds": elapsed})
            else:
                log.warning("job %s: lease lost before the result; result dropped", job.id)
        except Exception as exc:
            if lost.is_set():
                log.warning("job %s: lease lost; stopped without writing", job.id)
            elif isinstance(exc, GenerationCancelled) and self.abort.is_set():
                self.s.jobs.release(job.id, token)  # shutting down: another worker takes it
            else:
                failure = failure_of(exc)
                self.s.jobs.fail(job.id, token, failure, time.perf_counter() - started)
                log.info(
                    "job failed", extra={"request_id": job.id, "error_type": failure.error_type}
                )
        finally:
            done.set()
            heartbeat.join()

    def _heartbeat(
        self, job_id: str, token: int, lost: threading.Event, done: threading.Event
    ) -> None:
        while not done.wait(self.s.lease_s / 3):
            if not self.s.jobs.renew(job_id, token, self.s.lease_s):
                lost.set()
                return

    def _store_output(self, key_id: str, job_id: str, mp4: bytes, seed: int) -> dict[str, object]:
        record = self.s.files.add(
            key_id=key_id,
            kind="output",
            file_name=f"{job_id}.mp4",
            content_type=c.VIDEO_CONTENT_TYPE,
            size=len(mp4),
            retention_s=self.s.retention_s,
        )
        self.s.storage.put(record.id, mp4)
        file = File(
            url=record.path,  # relative: the API makes it absolute for whoever asks
            content_type=record.content_type,
            file_name=record.file_name,
            file_size=record.size,
        )
        return VideoOutput(video=file, seed=seed).model_dump(mode="json")


def image_loader(
    files: FileStore, storage: LocalStorage, *, allow_private: bool = False
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
    """How an exception from a job is reported to the client."""
    if isinstance(exc, GenerationCancelled):
        return CANCELLED
    if isinstance(exc, InvalidInput):
        return Failure(exc.message, exc.error_type, 422)
    if isinstance(exc, ValidationError):
        field, message = field_errors(exc)[0]
        return Failure(f"{field}: {message}", "validation_error", 422)
    if isinstance(exc, OutOfMemory):
        return Failure(exc.message, exc.error_type, 503)
    if isinstance(exc, FastSVDError):
        return Failure(exc.message, exc.error_type, 500)
    log.exception("job failed", exc_info=exc)
    return Failure(f"internal error: {type(exc).__name__}", "internal_error", 500)
