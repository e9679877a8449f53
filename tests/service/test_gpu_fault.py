"""A GPU fault under a job (a CUDA error that leaves the context unusable): the worker hands
the job back, not counting the attempt, and exits with the code the supervisor restarts, instead
of failing every later job within milliseconds. Injected through the real runner and pipeline
(tiny preset) as the CUDA error torch raises; and the worker command's exit code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from fastsvd import constants as c
from fastsvd.endpoints import configured
from fastsvd.runner import ModelRunner
from fastsvd.services import Services
from fastsvd.settings import Settings
from fastsvd.store.jobs import GPU_FAULT, JobState
from fastsvd.worker import Worker
from tests.support.bodies import picture_uri
from tests.support.commands import run_cli
from tests.support.servers import ROOT

if TYPE_CHECKING:
    from fastsvd.pipeline.core import VideoPipeline

ILLEGAL_ACCESS = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect."
)


@pytest.mark.model
def test_a_gpu_fault_hands_the_job_back_and_stops_the_worker(
    tmp_path: Path, tiny_pipeline: VideoPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from fastsvd.pipeline import core

    settings = Settings(data_dir=tmp_path, auth=False, preset="tiny", device="cpu")
    services = Services.from_settings(settings)
    try:
        job, _new = services.jobs.submit(
            key_id="k",
            endpoint=c.IMAGE_TO_VIDEO_ENDPOINT,
            input={"image_url": picture_uri(), "video_size": {"width": 64, "height": 64}},
        )
        behind, _new = services.jobs.submit(
            key_id="k", endpoint=c.IMAGE_TO_VIDEO_ENDPOINT, input={"image_url": picture_uri()}
        )

        def faulty(*_args: object, **_kwargs: object) -> None:
            raise torch.AcceleratorError(ILLEGAL_ACCESS)  # what torch raises for CUDA's error

        monkeypatch.setattr(core, "animate", faulty)
        runner = ModelRunner(
            settings, lambda _url: Image.new("RGB", (64, 64)), configured(settings).needs()
        )
        monkeypatch.setattr(runner, "load", lambda: setattr(runner, "_pipeline", tiny_pipeline))
        worker = Worker.build(settings, services=services, runner=runner)
        assert worker.serve() == 1  # not burst: it stops by itself, after the one job
        assert worker.gpu_fault is not None
        assert "illegal memory access" in worker.gpu_fault.message
        handed = services.jobs.get(job.id)
        assert handed is not None
        assert (handed.state, handed.attempts, handed.error) == (JobState.queued, 0, None)
        assert any(line.message.startswith(GPU_FAULT) for line in services.jobs.logs(job.id))
        untouched = services.jobs.get(behind.id)  # not drained by the sick GPU
        assert untouched is not None
        assert (untouched.state, untouched.attempts) == (JobState.queued, 0)
    finally:
        services.close()


@pytest.mark.process
def test_the_worker_command_exits_with_the_gpu_fault_code(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTSVD_")}
    env.update(
        FASTSVD_DATA_DIR=str(tmp_path),
        FASTSVD_RUNNER="tests.fakes.runner:GpuFaulting",
        FASTSVD_IDLE_POLL_S="0.05",
    )
    services = Services.from_settings(Settings.from_env(env))
    try:
        job, _new = services.jobs.submit(
            key_id="k", endpoint=c.TEXT_TO_VIDEO_ENDPOINT, input={"prompt": "a rocket"}
        )
        done = run_cli("worker", env=env, cwd=ROOT)
        assert done.returncode == c.EXIT_GPU_FAULT, done.stderr
        assert "Traceback" not in done.stderr
        handed = services.jobs.get(job.id)
        assert handed is not None
        assert (handed.state, handed.attempts) == (JobState.queued, 0)
    finally:
        services.close()
