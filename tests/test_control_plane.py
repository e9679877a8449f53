"""What a job costs the control plane: a worker's claims between jobs, and late jobs ended by
the API's housekeeping without waiting for its slower rounds."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from fastsvd.serve import housekeeping
from fastsvd.services import Services
from fastsvd.settings import Settings
from fastsvd.store.jobs import Claim, JobState
from fastsvd.worker import Worker
from tests.fakes.runner import Runner
from tests.support.bodies import T2V
from tests.support.servers import wait_for


def test_a_worker_whose_result_found_the_queue_empty_does_not_claim_again_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0")
    settings = Settings(data_dir=tmp_path, auth=False)
    services = Services.from_settings(settings)
    try:
        services.jobs.submit(key_id="k", endpoint=T2V, input={"prompt": "x"})
        claims: list[Claim | None] = []
        claim = services.jobs.claim
        monkeypatch.setattr(
            services.jobs, "claim", lambda *a: claims.append(claim(*a)) or claims[-1]
        )
        worker = Worker.build(
            settings,
            services=services,
            runner=Runner(settings, lambda _url: Image.new("RGB", (8, 8))),
        )
        assert worker.serve(burst=True) == 1
        # the job's claim; the empty look was made with its result, not by a claim of its own
        assert len(claims) == 1
        assert claims[0] is not None
    finally:
        services.close()


def test_the_housekeeping_ends_a_late_job_between_its_rounds(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, auth=False, housekeeping_interval_s=3600.0)
    services = Services.from_settings(settings)
    stop = threading.Event()
    thread = threading.Thread(target=housekeeping, args=(services, stop))
    try:
        late, _ = services.jobs.submit(
            key_id="k", endpoint=T2V, input={"prompt": "x"}, start_deadline_at=time.time()
        )
        thread.start()  # no worker, and its reaping and expiry rounds an hour apart

        def ended() -> bool:
            job = services.jobs.get(late.id)
            return job is not None and job.state == JobState.completed

        wait_for(ended, "the late job to end")
        assert services.jobs.get(late.id).error_type == "request_timeout"  # type: ignore[union-attr]
    finally:
        stop.set()
        thread.join(30)
        services.close()
