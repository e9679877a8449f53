"""The drain a Kubernetes pod gets: SIGTERM to a ``fastsvd worker`` mid-job.

The worker stops claiming and finishes its job, or, past ``FASTSVD_DRAIN_S``, stops the job at
its next step and hands it back to the queue; then it exits, well inside the grace period the
manifests give it (``FASTSVD_DRAIN_S`` + 60 s, checked in test_kubernetes.py). Nothing is lost:
a job handed back runs on the next worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from fastsvd.constants import TEXT_TO_VIDEO_ENDPOINT as T2V
from fastsvd.services import Services
from fastsvd.settings import Settings
from fastsvd.store.db import Database
from fastsvd.store.jobs import Job, JobState, JobStore, NextClaim
from fastsvd.store.migrations import migrate
from fastsvd.worker import Worker
from tests.fakes.runner import Runner
from tests.support.servers import CEILING_S, PYTHONPATH, ROOT, wait_for

pytestmark = pytest.mark.process  # starts server processes

GRACE_MARGIN_S = 60.0  # the manifests' terminationGracePeriodSeconds - FASTSVD_DRAIN_S


def start_worker(data_dir: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fastsvd.cli", "worker", *args],
        cwd=ROOT,
        env={
            **os.environ,
            "FASTSVD_DATA_DIR": str(data_dir),
            "FASTSVD_RUNNER": "tests.fakes.runner:Runner",
            "FASTSVD_IDLE_POLL_S": "0.1",
            "PYTHONPATH": PYTHONPATH,
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def terminate_mid_job(worker: subprocess.Popen[str], store: JobStore, job_id: str) -> float:
    """SIGTERM once the job has logged a step; returns seconds from the signal to the exit."""

    def stepping() -> bool:
        job = store.get(job_id)
        return job is not None and job.state == JobState.running and len(store.logs(job_id)) > 2

    wait_for(stepping, "the job to be running")
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(CEILING_S)
    elapsed = time.monotonic() - sent
    assert code == 0
    return elapsed


def job(store: JobStore, job_id: str) -> Job:
    found = store.get(job_id)
    assert found is not None
    return found


def test_sigterm_finishes_the_running_job_and_leaves_the_queue(tmp_path: Path) -> None:
    db = Database(Settings(data_dir=tmp_path).db_url)
    migrate(db)
    store = JobStore(db)
    submit = {"key_id": "k", "endpoint": "fal-ai/fast-svd/text-to-video"}
    running, _ = store.submit(**submit, input={"prompt": "a", "steps": 20})
    worker = start_worker(tmp_path, FAKE_STEP_S="0.05")
    wait_for(lambda: job(store, running.id).state == JobState.running, "the claim")
    waiting, _ = store.submit(**submit, input={"prompt": "b", "steps": 2})
    elapsed = terminate_mid_job(worker, store, running.id)

    finished = job(store, running.id)
    assert finished.state == JobState.completed
    assert finished.output is not None
    assert finished.attempts == 1
    left = job(store, waiting.id)  # not claimed after the signal
    assert left.state == JobState.queued
    assert left.attempts == 0
    assert elapsed < GRACE_MARGIN_S
    db.dispose()


def test_past_the_drain_time_the_job_is_handed_back_and_runs_again(tmp_path: Path) -> None:
    db = Database(Settings(data_dir=tmp_path).db_url)
    migrate(db)
    store = JobStore(db)
    long_job, _ = store.submit(
        key_id="k", endpoint="fal-ai/fast-svd/text-to-video", input={"prompt": "a", "steps": 50}
    )
    drain_s = 0.3  # a 50-step job at 0.2 s a step needs 10 s: far more than the drain
    worker = start_worker(tmp_path, FAKE_STEP_S="0.2", FASTSVD_DRAIN_S=str(drain_s))
    elapsed = terminate_mid_job(worker, store, long_job.id)

    handed_back = job(store, long_job.id)
    assert handed_back.state == JobState.queued, handed_back
    assert handed_back.output is None
    assert handed_back.attempts == 1
    assert elapsed < drain_s + GRACE_MARGIN_S
    # stopped mid-way: handed back, not run to its end first
    assert not any(line.message == "video: step 50/50" for line in store.logs(long_job.id))

    # nothing lost: the next worker runs it to the end
    again = start_worker(tmp_path, "--burst", FAKE_STEP_S="0.001")
    assert again.wait(CEILING_S) == 0
    done = job(store, long_job.id)
    assert done.state == JobState.completed
    assert done.output is not None
    assert done.attempts == 2
    db.dispose()


def test_a_job_claimed_with_the_last_result_as_the_drain_begins_goes_back_untried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0")
    settings = Settings(data_dir=tmp_path, auth=False)
    services = Services.from_settings(settings)
    try:
        first, second = (
            services.jobs.submit(key_id="k", endpoint=T2V, input={"prompt": p})[0]
            for p in ("first", "second")
        )
        worker = Worker.build(
            settings,
            services=services,
            runner=Runner(settings, lambda _url: Image.new("RGB", (8, 8))),
        )
        claimant = worker.next_claimant

        def drain_meanwhile() -> NextClaim | None:
            asked = claimant()  # the next job is claimed with the first's result...
            worker.drain()  # ...while the SIGTERM arrives
            return asked

        monkeypatch.setattr(worker, "next_claimant", drain_meanwhile)
        assert worker.serve() == 1
        done, back = job(services.jobs, first.id), job(services.jobs, second.id)
        assert (done.state, done.error) == (JobState.completed, None)
        # claimed once (its token moved), then queued again with no attempt counted
        assert (back.state, back.attempts, back.lease_token) == (JobState.queued, 0, 1)
    finally:
        services.close()
