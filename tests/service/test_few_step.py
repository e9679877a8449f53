"""Both families from one queue, on the tiny preset's real models: a worker with everything
loaded runs a mixed queue in order; a worker with the few-step family alone never claims a
20-step job, which waits and says why; bad few-step input is a 422 naming the field."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from fastapi.testclient import TestClient

from fastsvd import constants as c
from fastsvd.api.app import create_app
from fastsvd.endpoints import ENDPOINTS
from fastsvd.hooks import Stage
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.presets import FEW_STEP, STANDARD
from fastsvd.runner import ModelRunner
from fastsvd.services import Services
from fastsvd.settings import Settings
from fastsvd.worker import Worker
from tests.support.bodies import SIZE_64, picture_uri
from tests.support.servers import wait_for

pytestmark = pytest.mark.model  # the real pipeline, tiny preset

TWO_STEPS = {**SIZE_64, "steps": 2, "seed": 1}

FEW_STEP_ONLY = (c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT, c.FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT)


BODIES: dict[str, dict[str, Any]] = {
    c.TEXT_TO_VIDEO_ENDPOINT: {"prompt": "a rocket", **TWO_STEPS},
    c.IMAGE_TO_VIDEO_ENDPOINT: {"image_url": picture_uri(), **TWO_STEPS},
    c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT: {"prompt": "a rocket", **TWO_STEPS},
    c.FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT: {"image_url": picture_uri(), **TWO_STEPS},
}


def served(tmp_path: Path, **settings: Any) -> tuple[TestClient, Services, Settings]:
    config = Settings(
        data_dir=tmp_path, auth=False, idle_poll_s=0.05, preset="tiny", device="cpu", **settings
    )
    services = Services.from_settings(config)
    return TestClient(create_app(services, ENDPOINTS)), services, config


@pytest.fixture
def everything(tmp_path: Path) -> Iterator[tuple[TestClient, Services, Settings]]:
    client, services, settings = served(tmp_path)
    with client:
        yield client, services, settings
    services.close()


@pytest.fixture
def few_step_only(tmp_path: Path) -> Iterator[tuple[TestClient, Services, Settings]]:
    # FASTSVD_FEW_STEP_GUIDANCE=1.0 too: the runner hands it to the pipeline
    client, services, settings = served(tmp_path, endpoints=FEW_STEP_ONLY, few_step_guidance=1.0)
    with client:
        yield client, services, settings
    services.close()


def model_worker(services: Services, settings: Settings) -> tuple[Worker, ModelRunner]:
    worker = Worker.build(settings, services=services, name="model-worker")
    assert isinstance(worker.runner, ModelRunner)
    return worker, worker.runner


def frames_of(client: TestClient, url: str) -> int:
    data = client.get(url).content
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_one_worker_runs_a_mixed_queue_of_all_four_in_order(
    everything: tuple[TestClient, Services, Settings],
) -> None:
    client, services, settings = everything
    order = [*ENDPOINTS.ids(), *reversed(ENDPOINTS.ids())]  # each family after the other
    submitted = []
    for endpoint in order:
        answer = client.post(f"/{endpoint}", json=BODIES[endpoint])
        assert answer.status_code == 200, answer.text
        submitted.append(answer.json())
    worker, runner = model_worker(services, settings)
    assert worker.serve(burst=True) == len(order)  # one worker, every endpoint
    pipeline = runner._pipeline

    assert isinstance(pipeline, VideoPipeline)
    assert all(
        p is not None for p in (pipeline.first_frame, pipeline.model(FEW_STEP, Stage.first_frame))
    )
    started = []
    for endpoint, answer in zip(order, submitted, strict=True):
        job = services.jobs.get(answer["request_id"])
        assert job is not None
        assert job.endpoint == endpoint
        assert job.error is None, job.error
        assert job.started_at is not None
        started.append(job.started_at)
        result = client.get(answer["response_url"]).json()
        assert frames_of(client, result["video"]["url"]) == c.NUM_FRAMES
    assert started == sorted(started)  # in the order they were queued
    logs = client.get(submitted[2]["status_url"], params={"logs": 1}).json()["logs"]
    # the few-step text-to-video: SDXL-Lightning's own 4 steps, then the requested 2
    messages = [line["message"] for line in logs]
    assert "first_frame: step 4/4" in messages
    assert "video: step 2/2" in messages


def test_a_few_step_worker_never_claims_a_20_step_job(
    few_step_only: tuple[TestClient, Services, Settings],
) -> None:
    client, services, settings = few_step_only
    waiting = client.post(f"/{c.TEXT_TO_VIDEO_ENDPOINT}", json=BODIES[c.TEXT_TO_VIDEO_ENDPOINT])
    few = client.post(
        f"/{c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT}", json=BODIES[c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT]
    )
    worker, runner = model_worker(services, settings)
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    try:
        done_url = few.json()["status_url"]
        wait_for(lambda: client.get(done_url).json()["status"] == "COMPLETED", "the few-step job")
        pipeline = runner._pipeline
        from fastsvd.pipeline.core import VideoPipeline  # torch: only where the model runs

        assert isinstance(pipeline, VideoPipeline)
        assert pipeline.model(STANDARD, Stage.video) is None  # no 20-step U-Nets in memory
        assert pipeline.first_frame is None
        assert pipeline.families[FEW_STEP].max_guidance_scale == 1.0
        ready = client.get("/ready").json()
        assert ready["endpoints"] == {
            c.TEXT_TO_VIDEO_ENDPOINT: 0,
            c.IMAGE_TO_VIDEO_ENDPOINT: 0,
            c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT: 1,
            c.FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT: 1,
        }
        status = client.get(waiting.json()["status_url"], params={"logs": 1}).json()
        assert status["status"] == "IN_QUEUE"
        assert status["logs"][-1]["level"] == "WARN"
        assert f"no ready worker serves {c.TEXT_TO_VIDEO_ENDPOINT}" in status["logs"][-1]["message"]
        assert "logs" not in client.get(waiting.json()["status_url"]).json()
    finally:
        worker.stopping.set()
        worker.listener.wake()
        thread.join(timeout=60)
    job = services.jobs.get(waiting.json()["request_id"])
    assert job is not None
    assert job.started_at is None  # never claimed


@pytest.mark.parametrize(
    ("endpoint", "body", "field"),
    [
        (c.FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT, {"steps": 4}, "image_url"),
        (c.FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT, {"image_url": picture_uri(), "steps": 21}, "steps"),
        (c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT, {"prompt": "x", "steps": 21}, "steps"),
        (
            c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT,
            {"prompt": "x", "motion_bucket_id": 0},
            "motion_bucket_id",
        ),
        (c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT, {"prompt": "x", "cond_aug": 11}, "cond_aug"),
    ],
)
def test_bad_few_step_input_is_a_422_naming_the_field(
    everything: tuple[TestClient, Services, Settings],
    endpoint: str,
    body: dict[str, Any],
    field: str,
) -> None:
    client, _services, _settings = everything
    answer = client.post(f"/{endpoint}", json=body)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", field]


def test_fields_of_the_other_family_are_ignored_as_unknown_fields_are(
    everything: tuple[TestClient, Services, Settings],
) -> None:
    client, services, _settings = everything
    body = {"prompt": "x", "negative_prompt": "blur", "deep_cache": "high", "bogus": 1}
    answer = client.post(f"/{c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT}", json=body)
    assert answer.status_code == 200
    job = services.jobs.get(answer.json()["request_id"])
    assert job is not None
    assert job.input["steps"] == c.DEFAULT_FEW_STEP_STEPS
    assert job.input["fps"] == c.DEFAULT_FPS
    assert job.input["video_size"] == {"width": 1024, "height": 576}  # landscape_16_9
    assert not {"negative_prompt", "deep_cache", "bogus"} & set(job.input)
