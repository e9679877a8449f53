"""A worker's heartbeat: one thread, a tick at a time, renewing the running job's lease."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import update

from fastsvd.services import Services
from fastsvd.settings import Settings
from fastsvd.store.jobs import JobState
from fastsvd.store.tables import jobs
from fastsvd.worker import Worker
from tests.fakes.runner import Runner
from tests.support.bodies import T2V

LEASE_S = 0.6  # renewed every 0.2 s, the heartbeat's tick


def worker_and_job(tmp_path: Path, steps: int) -> tuple[Worker, Services, str]:
    settings = Settings(data_dir=tmp_path, auth=False, lease_s=LEASE_S)
    services = Services.from_settings(settings)
    job, _ = services.jobs.submit(key_id="k", endpoint=T2V, input={"prompt": "x", "steps": steps})
    runner = Runner(settings, lambda _url: Image.new("RGB", (8, 8)))
    return Worker.build(settings, services=services, runner=runner), services, job.id


def test_a_job_longer_than_its_lease_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    worker, services, job_id = worker_and_job(tmp_path, steps=15)  # 1.5 s: 2.5 leases
    renewals: list[bool] = []
    renew = services.jobs.renew
    monkeypatch.setattr(
        services.jobs, "renew", lambda *a: renewals.append(renew(*a)) or renewals[-1]
    )
    stop = threading.Event()

    def reaper() -> None:  # another worker's reaping rounds, as often as they can
        while not stop.is_set():
            services.jobs.reap()
            stop.wait(0.05)

    thread = threading.Thread(target=reaper)
    thread.start()
    try:
        assert worker.serve(burst=True) == 1
    finally:
        stop.set()
        thread.join()
        services.close()
    done = services.jobs.get(job_id)
    assert done is not None
    assert (done.state, done.error, done.attempts) == (JobState.completed, None, 1)
    assert len(renewals) >= 5  # every 0.2 s
    assert all(renewals)


def test_a_job_whose_lease_was_taken_stops_writes_nothing_and_gets_no_more_beats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    worker, services, job_id = worker_and_job(tmp_path, steps=30)  # 3 s, if never stopped
    renewals: list[bool] = []
    renew = services.jobs.renew

    def taken_at_the_first_renewal(*args: object) -> bool:
        if not renewals:  # another worker claimed it meanwhile: its token moved on
            with services.db.write() as conn:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(lease_token=jobs.c.lease_token + 1)
                )
        renewals.append(renew(*args))  # type: ignore[arg-type]
        return renewals[-1]

    monkeypatch.setattr(services.jobs, "renew", taken_at_the_first_renewal)
    try:
        assert worker.serve(burst=True) == 1
        lost = services.jobs.get(job_id)
        assert lost is not None
        assert (lost.state, lost.output, lost.finished_at) == (JobState.running, None, None)
        assert renewals == [False]  # refused once, then no more beats
    finally:
        services.close()
