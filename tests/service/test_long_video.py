"""Videos longer than 25 frames through a real server on the tiny preset's models, driven by
fal's official Python client: exact frame counts, the same seed giving the same video, the
segment in the progress lines, a cancel in the second segment, and the field's bounds."""

from __future__ import annotations

import io
from collections.abc import Iterator

import av
import fal_client
import httpx
import numpy as np
import pytest

from fastsvd import constants as c
from fastsvd.progress import parse_step_line
from tests.service.test_fal_client import fal  # noqa: F401  (the client pointed at ``server``)
from tests.support.servers import Server, start_server, stop_server, wait_for

SMALL = {"video_size": {"width": 64, "height": 64}, "steps": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server running the real pipeline (not a stand-in) on the tiny preset."""
    running = start_server(
        tmp_path_factory.mktemp("long"),
        FASTSVD_RUNNER="",
        FASTSVD_PRESET="tiny",
        FASTSVD_DEVICE="cpu",
        FASTSVD_IDLE_POLL_S="0.2",
    )
    yield running
    stop_server(running)


def mp4_of(result: dict[str, object]) -> bytes:
    video = result["video"]
    assert isinstance(video, dict)
    return httpx.get(video["url"]).content


def frames_of(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.asarray(frames, dtype=np.int16)


def test_49_and_60_frames_and_the_same_seed_gives_the_same_frames(
    fal: fal_client.SyncClient,  # noqa: F811
) -> None:
    # the few-step family, whose chains are the cheapest long videos
    body = {"prompt": "a lighthouse", "seed": 5, "num_frames": 49, **SMALL}
    updates: list[fal_client.Status] = []
    first = fal.subscribe(
        c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT, body, with_logs=True, on_queue_update=updates.append
    )
    video = frames_of(mp4_of(first))
    assert len(video) == 49
    final = updates[-1]
    assert isinstance(final, fal_client.Completed)
    steps = [parse_step_line(line["message"]) for line in final.logs or []]
    video_steps = [(s.segment, s.segments) for s in steps if s is not None and s.stage == "video"]
    assert video_steps == [(1, 2), (2, 2)]
    assert "video: segment 2/2, step 1/1" in [line["message"] for line in final.logs or []]
    # 60 frames with the same seed: three segments, the last one cut; the first two are the
    # 49-frame video's, the same frames (bit for bit: tests/pipeline). Their MP4s are not
    # byte-identical (another length; and multi-threaded x264 encodes the same frames one of
    # two ways, decoded 1.6 levels apart on average; another seed is about 22 away)
    longer = fal.subscribe(c.FEW_STEP_TEXT_TO_VIDEO_ENDPOINT, {**body, "num_frames": 60})
    more = frames_of(mp4_of(longer))
    assert len(more) == 60
    assert np.abs(more[:49] - video).mean() < 4


def test_a_cancel_in_the_second_segment_ends_the_request(
    fal: fal_client.SyncClient,  # noqa: F811
) -> None:
    body = {"prompt": "a lighthouse", "num_frames": c.NUM_FRAMES_MAX, **SMALL, "steps": 4}
    handle = fal.submit(c.TEXT_TO_VIDEO_ENDPOINT, body)

    def in_second_segment() -> bool:
        status = handle.status(with_logs=True)
        lines = status.logs if isinstance(status, fal_client.InProgress) else None
        return any("segment 2/10" in line["message"] for line in lines or [])

    wait_for(in_second_segment, "the second segment to start")
    handle.cancel()
    with pytest.raises(fal_client.FalClientHTTPError) as caught:
        handle.get()
    assert caught.value.status_code == 499
    assert caught.value.error_type == "cancelled"
    status = handle.status(with_logs=True)
    assert isinstance(status, fal_client.Completed)
    steps = [s for line in status.logs or [] if (s := parse_step_line(line["message"]))]
    assert max(s.segment for s in steps) < 10  # stopped long before the end
    assert not any(s.stage == "export" and s.step == c.NUM_FRAMES_MAX for s in steps)


@pytest.mark.parametrize("endpoint", [c.TEXT_TO_VIDEO_ENDPOINT, c.FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT])
def test_num_frames_out_of_range_is_a_422_naming_the_field(
    fal: fal_client.SyncClient,  # noqa: F811
    endpoint: str,
) -> None:
    for value in (c.NUM_FRAMES_MAX + 1, 0, "49"):
        with pytest.raises(fal_client.FalClientHTTPError) as refused:
            fal.submit(endpoint, {"prompt": "x", "image_url": "data:,", "num_frames": value})
        assert refused.value.status_code == 422
        assert refused.value.response.json()["detail"][0]["loc"] == ["body", "num_frames"]
    with pytest.raises(fal_client.FalClientHTTPError) as refused:
        fal.submit(endpoint, {"prompt": "x", "image_url": "data:,", "color_match": "yes"})
    assert refused.value.response.json()["detail"][0]["loc"] == ["body", "color_match"]


def test_openapi_documents_both_fields_on_every_endpoint(server: Server) -> None:
    schemas = httpx.get(f"{server.url}/openapi.json").json()["components"]["schemas"]
    for name in (
        "TextToVideoInput",
        "ImageToVideoInput",
        "FewStepTextToVideoInput",
        "FewStepImageToVideoInput",
    ):
        num_frames = schemas[name]["properties"]["num_frames"]
        assert (num_frames["default"], num_frames["minimum"], num_frames["maximum"]) == (25, 1, 241)
        assert "fastsvd's extension" in num_frames["description"]
        assert schemas[name]["properties"]["color_match"]["default"] is True
