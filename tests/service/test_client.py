"""fastsvd.client against a real server: on loopback, and through injected transports (one
that records and disturbs the traffic, and one that calls the API application in-process while
the server's worker runs the jobs)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from fastsvd.api.app import create_app
from fastsvd.client import (
    AsyncClient,
    ClientError,
    Completed,
    InProgress,
    Queued,
    Status,
    SyncClient,
)
from fastsvd.schema import VideoOutput
from fastsvd.services import Services
from fastsvd.settings import Settings
from tests.support.bodies import I2V, SMALL, T2V
from tests.support.servers import Server, start_server, stop_server

pytestmark = pytest.mark.process  # starts server processes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("client"))
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture
def client(server: Server) -> Iterator[SyncClient]:
    with SyncClient(server.url, server.key) as opened:
        yield opened


class Recorder(httpx.BaseTransport):
    """Sends through a real connection, records each request, and can answer the first few
    with a 503 (the database restarting) instead."""

    def __init__(self, unavailable: int = 0) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent: list[httpx.Request] = []
        self.unavailable = unavailable

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        if self.unavailable:
            self.unavailable -= 1
            return httpx.Response(503, json={"detail": "restarting"}, headers={"retry-after": "0"})
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_subscribe_reports_progress_and_returns_a_typed_result(client: SyncClient) -> None:
    updates: list[Status] = []
    enqueued: list[str] = []
    result = client.subscribe(
        T2V,
        {"prompt": "a red fox", "seed": 11, **SMALL},
        with_logs=True,
        on_enqueue=enqueued.append,
        on_queue_update=updates.append,
    )
    assert isinstance(result, VideoOutput)
    assert result.seed == 11
    assert result.video.content_type == "video/mp4"
    assert client.download(result.video.url)[4:8] == b"ftyp"  # an MP4
    assert len(enqueued) == 1
    final = updates[-1]
    assert isinstance(final, Completed)
    assert final.error is None
    assert final.metrics["inference_time"] > 0
    messages = [line["message"] for line in final.logs or []]
    assert messages[0] == "seed 11"
    assert messages[-1] == "video: step 3/3"
    assert all(isinstance(u, Queued | InProgress | Completed) for u in updates)


def test_submit_status_result_and_events_through_a_handle(client: SyncClient) -> None:
    handle = client.submit(T2V, {"prompt": "a rocket", **SMALL})
    assert isinstance(handle.status(), Queued | InProgress | Completed)
    events = list(handle.iter_events(with_logs=True))
    assert isinstance(events[-1], Completed)
    assert sum(isinstance(e, Completed) for e in events) == 1
    output = handle.get()
    assert output == client.result(T2V, handle.request_id)


def test_cancel_then_the_result_says_cancelled(client: SyncClient) -> None:
    handle = client.submit(T2V, {"prompt": "slow", **SMALL, "steps": 50})
    for event in handle.iter_events():
        if isinstance(event, InProgress):
            break
    assert handle.cancel() == "CANCELLATION_REQUESTED"
    with pytest.raises(ClientError) as caught:
        handle.get()
    assert caught.value.status_code == 499
    assert caught.value.error_type == "cancelled"
    assert handle.cancel() == "ALREADY_COMPLETED"


def test_upload_then_image_to_video(client: SyncClient, tmp_path: Path) -> None:
    picture = tmp_path / "blue.png"
    Image.new("RGB", (64, 64), (10, 20, 250)).save(picture)
    url = client.upload_file(picture)
    assert url.startswith(client.url + "/files/")
    result = client.subscribe(I2V, {"image_url": url, **SMALL})
    video = client.download(result.video.url)
    assert len(video) == result.video.file_size
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format="PNG")
    assert client.upload(out.getvalue(), "image/png", "tiny.png").endswith("/tiny.png")


def test_run_waits_for_the_output(client: SyncClient) -> None:
    result = client.run(T2V, {"prompt": "a boat", "seed": 5, **SMALL})
    assert result.seed == 5


def test_errors_are_one_line_naming_the_field(client: SyncClient, server: Server) -> None:
    with pytest.raises(ClientError) as caught:
        client.submit(T2V, {"prompt": "x", "video_size": {"width": 100, "height": 64}})
    assert caught.value.status_code == 422
    assert caught.value.fields[0][0].startswith("video_size")
    assert "\n" not in str(caught.value)
    assert "video_size" in str(caught.value)
    with SyncClient(server.url, "nobody:wrong") as stranger, pytest.raises(ClientError) as denied:
        stranger.status(T2V, "00000000-0000-0000-0000-000000000000")
    assert denied.value.status_code == 401


def test_an_injected_transport_sees_the_calls_and_503s_are_waited_out(server: Server) -> None:
    recorder = Recorder(unavailable=2)
    with SyncClient(server.url, server.key, transport=recorder) as client:
        result = client.subscribe(T2V, {"prompt": "a kite", "seed": 3, **SMALL})
    assert result.seed == 3
    first = recorder.sent[0]
    assert first.method == "POST"
    assert first.url.path == f"/{T2V}"
    assert first.headers["authorization"] == f"Key {server.key}"
    assert [r.url.path for r in recorder.sent[:3]] == [f"/{T2V}"] * 3  # two 503s, then queued
    request_id = recorder.sent[3].url.path  # after the submit: status polls, then the result
    assert request_id.endswith("/status")
    assert recorder.sent[-1].url.path == request_id.removesuffix("/status")


def test_the_async_client_in_process_against_the_api_application(server: Server) -> None:
    """The API runs in this process (ASGI transport) on the server's own database; the server's
    worker picks the jobs up."""
    settings = Settings.from_env({"FASTSVD_DATA_DIR": str(server.data_dir)})
    services = Services.from_settings(settings)
    transport = httpx.ASGITransport(app=create_app(services))

    async def scenario() -> None:
        async with AsyncClient("http://in-process", server.key, transport=transport) as client:
            handle = await client.submit(T2V, {"prompt": "a train", "seed": 9, **SMALL})
            events = [event async for event in handle.iter_events(with_logs=True)]
            assert isinstance(events[-1], Completed)
            output = await handle.get()
            assert output.seed == 9
            assert output.video.url.startswith("http://in-process/files/")
            assert (await client.download(output.video.url))[4:8] == b"ftyp"

    try:
        asyncio.run(scenario())
    finally:
        services.close()


def test_the_async_client_on_loopback(server: Server) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url, server.key) as client:
            results = await asyncio.gather(
                *(
                    client.subscribe(T2V, {"prompt": f"a dog {i}", "seed": i, **SMALL})
                    for i in range(3)
                )
            )
            assert [r.seed for r in results] == [0, 1, 2]
            handle = await client.submit(T2V, {"prompt": "slow", **SMALL, "steps": 50})
            assert await handle.cancel() == "CANCELLATION_REQUESTED"
            with pytest.raises(ClientError):
                await handle.get()

    asyncio.run(scenario())
