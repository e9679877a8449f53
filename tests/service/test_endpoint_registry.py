"""An endpoint is one registry entry plus its capability: a throwaway endpoint, registered here
only, is served end to end by the same code as fal's (submit, status, stream, result, cancel,
sync run, OpenAPI, history) and claimed by a worker whose runner has its capability."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field

from fastsvd.api.app import create_app
from fastsvd.endpoints import ENDPOINTS, Endpoint
from fastsvd.hooks import Hooks, Stage, StepEvent
from fastsvd.services import Services
from fastsvd.settings import Settings
from fastsvd.worker import Worker

ECHO = "test-org/echo"


class EchoInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str = Field(..., min_length=1, max_length=100)
    repeat: int = Field(1, ge=1, le=5)


class EchoRunner:
    """A stand-in runner with one capability: the 'video' is the text, repeated."""

    capabilities = frozenset({"echo"})

    def __init__(self) -> None:
        self.ran: list[str] = []

    def load(self) -> None:
        return None

    def idle(self) -> bool:
        return False

    def run(self, capability: str, request: BaseModel, seed: int, hooks: Hooks) -> bytes:
        assert capability == "echo"
        assert isinstance(request, EchoInput)
        for step in range(1, request.repeat + 1):
            hooks.check_cancel(Stage.video, step)
            hooks.on_step(StepEvent(Stage.video, step, request.repeat))
        self.ran.append(request.text)
        return (request.text * request.repeat).encode()


ENDPOINT = Endpoint(id=ECHO, input=EchoInput, capability="echo", summary="echo", title="Echo")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, Services]]:
    settings = Settings(data_dir=tmp_path, auth=False, idle_poll_s=0.05)
    services = Services.from_settings(settings)
    with TestClient(create_app(services, ENDPOINTS.plus(ENDPOINT))) as client:
        yield client, services
    services.close()


def start_worker(services: Services, runner: EchoRunner) -> tuple[Worker, threading.Thread]:
    worker = Worker.build(
        services.settings,
        services=services,
        runner=runner,  # type: ignore[arg-type]
        name="echo-worker",
        endpoints=ENDPOINTS.plus(ENDPOINT),
    )
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    return worker, thread


def stream_until_completed(client: TestClient, status_url: str) -> list[dict[str, Any]]:
    events = []
    with client.stream("GET", status_url + "/stream", params={"logs": 1}) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    assert events[-1]["status"] == "COMPLETED"
    return events


def test_a_registered_endpoint_is_served_end_to_end(
    served: tuple[TestClient, Services],
) -> None:
    client, services = served

    # OpenAPI: its routes and its input model, from the registry entry alone
    schema = client.get("/openapi.json").json()
    assert {
        f"/{ECHO}",
        f"/run/{ECHO}",
        "/test-org/echo/requests",
        "/test-org/echo/requests/{request_id}/status",
        "/test-org/echo/requests/{request_id}/status/stream",
        "/test-org/echo/requests/{request_id}",
        "/test-org/echo/requests/{request_id}/cancel",
    } <= set(schema["paths"])
    assert "EchoInput" in schema["components"]["schemas"]
    assert '"id": "test-org/echo"' in client.get("/").text  # the playground lists it

    # bad input names the field; an unknown field is ignored, as on fal's endpoints
    refused = client.post(f"/{ECHO}", json={"text": "a", "repeat": 9})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "repeat"]

    # cancelled while queued (no worker yet): never runs
    cancelled = client.post(f"/{ECHO}", json={"text": "never"}).json()
    assert cancelled["cancel_url"].endswith(
        f"/test-org/echo/requests/{cancelled['request_id']}/cancel"
    )
    assert client.put(cancelled["cancel_url"]).json() == {"status": "CANCELLATION_REQUESTED"}
    assert client.get(cancelled["response_url"]).status_code == 499

    # a 20-step endpoint's job is not this worker's: it has no text_to_video capability
    other = client.post("/fal-ai/fast-svd/text-to-video", json={"prompt": "a"}).json()

    submitted = client.post(f"/{ECHO}", json={"text": "hi", "repeat": 3, "unknown": 1}, params={})
    assert submitted.status_code == 200
    job = submitted.json()
    assert job["status"] == "IN_QUEUE"
    assert job["status_url"].endswith(f"/test-org/echo/requests/{job['request_id']}/status")

    runner = EchoRunner()
    worker, thread = start_worker(services, runner)
    try:
        events = stream_until_completed(client, job["status_url"])
        logs = [entry["message"] for entry in events[-1]["logs"]]
        assert "video: step 3/3" in logs
        status = client.get(job["status_url"])
        assert status.status_code == 200
        assert status.json()["status"] == "COMPLETED"

        output = client.get(job["response_url"]).json()
        video = client.get(output["video"]["url"])
        assert video.content == b"hihihi"

        ran = client.post(f"/run/{ECHO}", json={"text": "sync"})
        assert ran.status_code == 200
        assert client.get(ran.json()["video"]["url"]).content == b"sync"

        history = client.get("/test-org/echo/requests").json()["requests"]
        by_id = {item["request_id"]: item for item in history}
        assert by_id[job["request_id"]]["endpoint"] == ECHO
        assert by_id[job["request_id"]]["input"] == {"text": "hi", "repeat": 3}
        assert by_id[other["request_id"]]["endpoint"] == "fal-ai/fast-svd/text-to-video"
    finally:
        worker.stopping.set()
        worker.listener.wake()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert runner.ran == ["hi", "sync"]  # the cancelled one never ran
    assert worker.endpoints.ids() == [ECHO]
    left = client.get(other["status_url"]).json()
    assert left["status"] == "IN_QUEUE"  # no worker here serves it
