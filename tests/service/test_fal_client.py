"""The official Python client, ``fal-client`` from PyPI, against a real fastsvd server.

fal-client hard-codes https hosts; its module globals are read at call time, so pointing them at
the server is the documented way to use it with a self-hosted endpoint (see the README).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import av
import fal_client
import fal_client.client as fal_module
import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import Server, wait_for

T2V = "fal-ai/fast-svd/text-to-video"
I2V = "fal-ai/fast-svd"
SMALL = {"video_size": {"width": 64, "height": 64}, "steps": 3}
# each family's text-to-video and image-to-video endpoints, and its most steps
FAMILIES = {
    "20-step": (T2V, I2V, 30),
    "few-step": ("fal-ai/fast-svd-lcm/text-to-video", "fal-ai/fast-svd-lcm", 20),
}
family = pytest.mark.parametrize(("t2v", "i2v", "most_steps"), FAMILIES.values(), ids=FAMILIES)


@pytest.fixture
def fal(server: Server) -> Iterator[fal_client.SyncClient]:
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
