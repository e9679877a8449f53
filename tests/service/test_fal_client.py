"""The official Python client, ``fal-client`` from PyPI, against a real fastsvd server.

fal-client hard-codes https hosts; its module globals are read at call time, so pointing them at
the server is the documented way to use it with a self-hosted endpoint (see the README).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import av
import fal_client
import fal_client.client as fal_module
import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from fastsvd.progress import parse_first_frame_line
from fastsvd.settings import Settings
from fastsvd.storage import open_storage
from fastsvd.store.db import Database
from fastsvd.store.tables import files
from tests.support.bodies import I2V, SMALL, T2V
from tests.support.servers import Server, start_server, stop_server, wait_for

pytestmark = pytest.mark.process  # starts server processes

# each family's text-to-video and image-to-video endpoints, and its most steps
FAMILIES = {
    "20-step": (T2V, I2V, 30),
    "few-step": ("fal-ai/fast-svd-lcm/text-to-video", "fal-ai/fast-svd-lcm", 20),
}
family = pytest.mark.parametrize(("t2v", "i2v", "most_steps"), FAMILIES.values(), ids=FAMILIES)
LIFECYCLE = "X-Fal-Object-Lifecycle-Preference"
RETENTION_S = 600  # the server's own retention: the most a request may ask for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: dict[str, str]) -> Iterator[Server]:
    """The shared server, keeping files ten minutes at most and reaping expired ones five
    times a second."""
    running = start_server(
        tmp_path_factory.mktemp("server"),
        **backend,
        FASTSVD_RETENTION_S=str(RETENTION_S),
        FASTSVD_HOUSEKEEPING_INTERVAL_S="0.2",
    )
    yield running
    stop_server(running)


@pytest.fixture
def fal(server: Server) -> Iterator[fal_client.SyncClient]:
    with fal_client_of(server) as client:
        yield client


@contextlib.contextmanager
def fal_client_of(server: Server) -> Iterator[fal_client.SyncClient]:
    """fal-client pointed at ``server``, with its key."""
    saved = {
        name: getattr(fal_module, name)
        for name in ("QUEUE_URL_FORMAT", "RUN_URL_FORMAT", "REST_URL", "CDN_URL")
    }
    fal_module.QUEUE_URL_FORMAT = f"{server.url}/"
    fal_module.RUN_URL_FORMAT = f"{server.url}/run/"
    fal_module.REST_URL = server.url
    fal_module.CDN_URL = server.url
    client = fal_client.SyncClient(key=server.key)
    # fal-client makes a new httpx client per upload and never closes it; close them here
    made: list[httpx.Client] = []
    make_cdn_client = client._get_cdn_client

    def tracked_cdn_client() -> httpx.Client:
        made.append(make_cdn_client())
        return made[-1]

    object.__setattr__(client, "_get_cdn_client", tracked_cdn_client)  # a frozen dataclass
    try:
        yield client
    finally:
        for name, value in saved.items():
            setattr(fal_module, name, value)
        for http in made:
            http.close()
        if "_client" in client.__dict__:
            client._client.close()


def first_frame_colour(url: str) -> list[int]:
    data = httpx.get(url).content
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    return [int(v) for v in frame.reshape(-1, 3).mean(axis=0).round()]


@family
def test_subscribe_with_logs_and_queue_updates(
    fal: fal_client.SyncClient, t2v: str, i2v: str, most_steps: int
) -> None:
    updates: list[fal_client.Status] = []
    result = fal.subscribe(
        t2v,
        {"prompt": "a rocket", "seed": 5, **SMALL},
        with_logs=True,
        on_queue_update=updates.append,
    )
    assert result["seed"] == 5
    assert result["video"]["content_type"] == "video/mp4"
    assert any(isinstance(u, fal_client.Queued | fal_client.InProgress) for u in updates)
    final = updates[-1]
    assert isinstance(final, fal_client.Completed)
    assert [log["message"] for log in final.logs or []][-1] == "video: step 3/3"


def test_submit_status_and_result(fal: fal_client.SyncClient) -> None:
    handle = fal.submit(T2V, {"prompt": "a rocket", **SMALL})
    wait_for(lambda: isinstance(handle.status(), fal_client.Completed), "the request to complete")
    status = handle.status(with_logs=True)
    assert isinstance(status, fal_client.Completed)
    assert status.metrics["inference_time"] > 0
    assert [log["message"] for log in status.logs or []][-1] == "video: step 3/3"
    assert handle.get()["video"]["file_size"] > 0
    assert fal.status(T2V, handle.request_id, with_logs=False) == fal_client.Completed(
        logs=None, metrics=status.metrics
    )
    assert fal.result(T2V, handle.request_id)["seed"] == handle.get()["seed"]


@family
def test_cancel_a_running_request(
    fal: fal_client.SyncClient, t2v: str, i2v: str, most_steps: int
) -> None:
    handle = fal.submit(t2v, {"prompt": "slow", **SMALL, "steps": most_steps})
    wait_for(lambda: isinstance(handle.status(), fal_client.InProgress), "the request to start")
    handle.cancel()
    with pytest.raises(fal_client.FalClientHTTPError) as caught:
        handle.get()
    assert caught.value.status_code == 499
    assert caught.value.error_type == "cancelled"


@family
def test_cancel_a_queued_request(
    fal: fal_client.SyncClient, t2v: str, i2v: str, most_steps: int
) -> None:
    running = fal.submit(t2v, {"prompt": "slow", **SMALL, "steps": most_steps})
    wait_for(lambda: isinstance(running.status(), fal_client.InProgress), "the first to start")
    queued = fal.submit(t2v, {"prompt": "a rocket", **SMALL})
    assert isinstance(queued.status(), fal_client.Queued)  # the one worker is busy
    queued.cancel()
    with pytest.raises(fal_client.FalClientHTTPError) as caught:
        queued.get()
    assert caught.value.error_type == "cancelled"
    running.cancel()
    with pytest.raises(fal_client.FalClientHTTPError):
        running.get()


@family
def test_upload_file_then_animate_it(
    fal: fal_client.SyncClient, tmp_path: Path, t2v: str, i2v: str, most_steps: int
) -> None:
    picture = tmp_path / "red.png"
    Image.new("RGB", (96, 64), (230, 20, 40)).save(picture)
    url = fal.upload_file(picture)
    assert url.startswith(fal_module.CDN_URL + "/files/")
    result = fal.subscribe(i2v, {"image_url": url, **SMALL})
    colour = first_frame_colour(result["video"]["url"])
    assert np.allclose(colour, [230, 20, 40], atol=6)  # the uploaded picture reached the model


def test_upload_through_the_storage_fallback(fal: fal_client.SyncClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format="PNG")
    url = fal.upload(buffer.getvalue(), "image/png", "green.png", repository="fal")
    assert httpx.get(url).content == buffer.getvalue()
    result = fal.run(I2V, arguments={"image_url": url, **SMALL})
    assert np.allclose(first_frame_colour(result["video"]["url"]), [10, 200, 10], atol=6)


@family
def test_synchronous_run(fal: fal_client.SyncClient, t2v: str, i2v: str, most_steps: int) -> None:
    result = fal.run(t2v, arguments={"prompt": "a rocket", "seed": 9, **SMALL})
    assert result["seed"] == 9


@family
def test_bad_input_raises_a_validation_error(
    fal: fal_client.SyncClient, t2v: str, i2v: str, most_steps: int
) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as caught:
        fal.submit(t2v, {"prompt": "x", "motion_bucket_id": 999})
    assert caught.value.status_code == 422
    with pytest.raises(fal_client.FalClientHTTPError) as caught:
        fal.submit(i2v, {"steps": most_steps + 1})  # no image_url, too many steps
    assert caught.value.status_code == 422
    assert "image_url" in str(caught.value)
    assert "steps" in str(caught.value)


# --- fal's platform headers, sent by the client ------------------------------------------------
# Output lifetime (X-Fal-Object-Lifecycle-Preference), no retry (x-fal-no-retry), the start
# deadline (start_timeout: X-Fal-Request-Timeout), and a clear 4xx naming a header whose value
# is wrong. The module's last tests: one kills the worker (it is restarted).


def file_rows(server: Server, request_id: str) -> list[tuple[str, float]]:
    """(id, lifetime in seconds) of the files a request made: its preview and its video."""
    db = Database(server.database_url)
    try:
        with db.read() as conn:
            rows = conn.execute(
                select(files.c.id, files.c.expires_at - files.c.created_at).where(
                    files.c.file_name.startswith(request_id)
                )
            ).all()
    finally:
        db.dispose()
    return [(row[0], float(row[1])) for row in rows]


def test_output_lifetime_per_request_then_404_and_deleted(
    server: Server,
    fal: fal_client.SyncClient,
    backend: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lifetime = {LIFECYCLE: json.dumps({"expiration_duration_seconds": 2})}
    handle = fal.submit(T2V, {"prompt": "a", **SMALL}, headers=lifetime)
    video = handle.get()["video"]["url"]
    status = handle.status(with_logs=True)
    assert isinstance(status, fal_client.Completed)
    assert status.logs is not None
    (preview,) = [u for log in status.logs if (u := parse_first_frame_line(log["message"]))]
    rows = file_rows(server, handle.request_id)
    assert sorted(seconds for _id, seconds in rows) == pytest.approx([2, 2])
    wait_for(
        lambda: all(httpx.get(url).status_code == 404 for url in (video, preview)),
        "the preview and the video to expire",
    )
    for name, value in backend.items():  # the server's storage, opened here
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    storage = open_storage(
        settings.storage_url,
        server.data_dir,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
    )
    wait_for(
        lambda: not any(storage.exists(file_id) for file_id, _ in rows),
        "the reaper to delete the expired files' bytes",
    )

    longer = {LIFECYCLE: json.dumps({"expiration_duration_seconds": 10**400, "initial_acl": {}})}
    capped = fal.submit(T2V, {"prompt": "a", **SMALL}, headers=longer)
    assert httpx.get(capped.get()["video"]["url"]).status_code == 200
    rows = file_rows(server, capped.request_id)
    assert [seconds for _id, seconds in rows] == pytest.approx([RETENTION_S] * 2)
    never = {LIFECYCLE: json.dumps({"expiration_duration_seconds": 0})}  # fal: no expiration
    for headers in ({}, never):  # the server's retention
        plain = fal.submit(T2V, {"prompt": "a", **SMALL}, headers=headers)
        plain.get()
        lifetimes = [seconds for _id, seconds in file_rows(server, plain.request_id)]
        assert lifetimes == pytest.approx([RETENTION_S] * 2)


def test_no_retry_ends_with_runner_disconnected_when_the_worker_dies(
    tmp_path: Path, fresh_backend: dict[str, str]
) -> None:
    server = start_server(
        tmp_path, **fresh_backend, FASTSVD_RUNNER="tests.fakes.runner:Crashing", FAKE_CRASHES="1"
    )
    try:
        with fal_client_of(server) as fal:
            handle = fal.submit(T2V, {"prompt": "a", **SMALL}, headers={"x-fal-no-retry": "yes"})
            wait_for(
                lambda: isinstance(handle.status(), fal_client.Completed), "the request to be ended"
            )
            status = handle.status()
            assert isinstance(status, fal_client.Completed)
            assert status.error_type == "runner_disconnected"
            with pytest.raises(fal_client.FalClientHTTPError) as failed:
                handle.get()
            assert failed.value.error_type == "runner_disconnected"
            assert server.job(handle.request_id).attempts == 1  # never run again
            # the restarted worker serves the next request
            assert fal.subscribe(T2V, {"prompt": "fine", **SMALL})["video"]["url"]
    finally:
        stop_server(server)


def test_start_timeout_answers_504_with_the_users_timeout_type(
    server: Server, fal: fal_client.SyncClient
) -> None:
    blocker = fal.submit(T2V, {"prompt": "slow", **SMALL, "steps": 4})  # 2 s on the one worker
    late = fal.submit(T2V, {"prompt": "a", **SMALL}, start_timeout=1.05)  # fal-client: > 1 s
    with pytest.raises(fal_client.FalClientHTTPError) as timed_out:
        late.get()
    assert timed_out.value.status_code == 504
    assert timed_out.value.error_type == "request_timeout"
    assert timed_out.value.response_headers["x-fal-request-timeout-type"] == "user"
    blocker.get()


MALFORMED = [
    (LIFECYCLE, "3600"),
    (LIFECYCLE, "{not json"),
    (LIFECYCLE, '{"expiration_duration_seconds": -1}'),
    (LIFECYCLE, '{"expiration_duration_seconds": "an hour"}'),
    (LIFECYCLE, '{"expiration_duration_seconds": NaN}'),
    (LIFECYCLE, '{"expiration_duration_seconds": 1e999}'),
    ("x-fal-no-retry", "maybe"),
    ("x-fal-request-timeout", "soon"),
    ("x-fal-request-timeout", "0.1"),  # fal's minimum: more than 0.1 s
    ("x-fal-request-start-timeout", "-5"),
]


def test_a_malformed_header_is_a_4xx_naming_it(fal: fal_client.SyncClient) -> None:
    for header, value in MALFORMED:
        with pytest.raises(fal_client.FalClientHTTPError) as refused:
            fal.submit(T2V, {"prompt": "a", **SMALL}, headers={header: value})
        assert refused.value.status_code == 422, (header, value)
        detail = refused.value.response.json()["detail"]
        assert detail[0]["loc"] == ["header", header.lower()], (header, value)
