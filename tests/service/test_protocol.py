"""fal's queue protocol, in process: the app through its ASGI interface, a worker thread with
the fake model, on each backend."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from fastsvd.schema import QueueStatus, SubmitResponse
from tests.support.bodies import REQUESTS_PATH, SMALL, T2V_PATH
from tests.support.inprocess import InProcessServer, start_in_process
from tests.support.servers import wait_done, wait_for


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, backend: dict[str, str]
) -> Iterator[InProcessServer]:
    """The app, a worker and the webhook deliverer in this process, on each backend."""
    running = start_in_process(tmp_path_factory.mktemp("server"), **backend)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def failing(
    tmp_path_factory: pytest.TempPathFactory, fresh_backend: dict[str, str]
) -> Iterator[InProcessServer]:
    """A server like ``server`` whose model fails every request."""
    running = start_in_process(
        tmp_path_factory.mktemp("failing"),
        **fresh_backend,
        FASTSVD_RUNNER="tests.fakes.runner:Failing",
    )
    try:
        yield running
    finally:
        running.close()


def submit(client: httpx.Client, prompt: str = "a rocket", **extra: object) -> dict[str, object]:
    response = client.post(T2V_PATH, json={"prompt": prompt, **SMALL, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert response.headers["x-fal-request-id"] == body["request_id"]
    return body


def test_submit_status_result_and_the_video_file(server: InProcessServer) -> None:
    with server.client() as client:
        sub = submit(client, seed=7)
        assert sub["status"] == "IN_QUEUE"
        rid = sub["request_id"]
        assert sub["status_url"] == f"{server.url}{REQUESTS_PATH}/{rid}/status"
        assert sub["response_url"] == f"{server.url}{REQUESTS_PATH}/{rid}"
        assert sub["cancel_url"] == f"{server.url}{REQUESTS_PATH}/{rid}/cancel"
        assert sub["queue_position"] == 0

        done = wait_done(client, str(sub["status_url"]))
        # the bodies are the ones /openapi.json documents
        SubmitResponse.model_validate(sub)
        QueueStatus.model_validate(done)
        assert done["metrics"]["inference_time"] > 0  # type: ignore[index]
        messages = [line["message"] for line in done["logs"]]  # type: ignore[union-attr]
        first_frame = [m for m in messages if m.startswith("first_frame: image ")]
        assert messages == [
            "seed 7",
            *[f"first_frame: step {i}/4" for i in range(1, 5)],
            *first_frame,  # the first frame's URL, while the video is still to come
            "video: step 1/3",
            "video: step 2/3",
            "video: step 3/3",
        ]
        preview = client.get(first_frame[0].removeprefix("first_frame: image "))
        assert preview.status_code == 200
        assert preview.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(preview.content)).size == (64, 64)
        assert all(line["source"] == "USER" for line in done["logs"])  # type: ignore[union-attr]

        final = client.get(f"{REQUESTS_PATH}/{rid}/status")
        assert final.status_code == 200
        assert final.json()["logs"] is None  # logs only when asked for

        result = client.get(str(sub["response_url"]))
        assert result.status_code == 200
        assert result.headers["x-fal-request-id"] == rid
        out = result.json()
        assert out["seed"] == 7
        video = out["video"]
        assert video["content_type"] == "video/mp4"
        assert video["url"].startswith(f"{server.url}/files/")

        whole = server.public("GET", video["url"])
        assert whole.status_code == 200
        assert whole.headers["content-type"] == "video/mp4"
        assert len(whole.content) == video["file_size"]
        part = server.public("GET", video["url"], headers={"Range": "bytes=4-11"})
        assert part.status_code == 206
        assert part.content == whole.content[4:12] == b"ftypisom"


def test_logs_param_spellings(server: InProcessServer) -> None:
    with server.client() as client:
        sub = submit(client)
        wait_done(client, str(sub["status_url"]))
        for value, has_logs in (("1", True), ("true", True), ("0", False), ("false", False)):
            body = client.get(str(sub["status_url"]), params={"logs": value}).json()
            assert (body["logs"] is not None) == has_logs, value


def test_queue_positions_and_priority(server: InProcessServer) -> None:
    with server.client() as client:
        blocker = submit(client, "slow one", steps=4)
        wait_for(  # the worker took it: the jobs below queue behind nothing else
            lambda: client.get(str(blocker["status_url"])).json()["status"] == "IN_PROGRESS",
            "the first job to start",
        )
        first = submit(client)
        low = client.post(
            T2V_PATH, json={"prompt": "x", **SMALL}, headers={"X-Fal-Queue-Priority": "low"}
        ).json()
        second = submit(client)
        positions = {
            name: client.get(str(body["status_url"])).json()
            for name, body in (("first", first), ("second", second), ("low", low))
        }
        assert positions["first"]["queue_position"] == 0
        assert positions["second"]["queue_position"] == 1
        assert positions["low"]["queue_position"] == 2
        assert client.get(str(blocker["status_url"])).status_code == 202
        for body in (blocker, first, second, low):
            wait_done(client, str(body["status_url"]))


def test_cancel_queued_running_finished_and_unknown(server: InProcessServer) -> None:
    with server.client() as client:
        running = submit(client, "slow", steps=20)
        queued = submit(client)
        wait_for(
            lambda: client.get(str(running["status_url"])).json()["status"] == "IN_PROGRESS",
            "the job to start",
        )

        answer = client.put(str(queued["cancel_url"]))
        assert (answer.status_code, answer.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
        answer = client.put(str(running["cancel_url"]))
        assert answer.status_code == 202

        stopped = wait_done(client, str(running["status_url"]))
        assert stopped["error_type"] == "cancelled"
        steps_run = [m for m in stopped["logs"] if "step" in m["message"]]  # type: ignore[union-attr]
        assert len(steps_run) < 20  # stopped within a step, not run to the end
        never = wait_done(client, str(queued["status_url"]))
        assert never["error_type"] == "cancelled"
        assert never["logs"] == []  # it never ran

        result = client.get(str(running["response_url"]))
        assert result.status_code == 499
        assert result.json()["detail"] == "Request cancelled"
        assert result.headers["x-fal-error-type"] == "cancelled"

        again = client.put(str(running["cancel_url"]))
        assert (again.status_code, again.json()["status"]) == (400, "ALREADY_COMPLETED")
        missing = client.put(f"{REQUESTS_PATH}/00000000-0000-0000-0000-000000000000/cancel")
        assert (missing.status_code, missing.json()["status"]) == (404, "NOT_FOUND")


def test_failure_is_completed_with_error_and_result_is_not_2xx(failing: InProcessServer) -> None:
    with failing.client() as client:
        sub = submit(client)
        done = wait_done(client, str(sub["status_url"]))
        assert done["error"] == "the fake model failed on purpose"
        assert done["error_type"] == "generation_failed"
        result = client.get(str(sub["response_url"]))
        assert result.status_code == 500
        assert result.json()["detail"] == "the fake model failed on purpose"
        failed = client.post(f"/run{T2V_PATH}", json={"prompt": "a rocket", **SMALL})
        assert failed.status_code == 500  # a synchronous run fails alike
        assert failed.json()["detail"] == "the fake model failed on purpose"


def test_validation_errors_are_422_with_fals_detail_list(server: InProcessServer) -> None:
    with server.client() as client:
        bad = client.post(
            T2V_PATH, json={"prompt": "x", "video_size": {"width": 100, "height": 64}}
        )
        assert bad.status_code == 422
        detail = bad.json()["detail"]
        assert detail[0]["loc"] == ["body", "video_size", "width"]
        assert "multiple of 64" in detail[0]["msg"]
        missing = client.post(T2V_PATH, json={})
        assert missing.json()["detail"][0]["loc"] == ["body", "prompt"]
        for body in (b"{not json", b"", b"[]", b'"text"', b"null"):
            response = client.post(
                T2V_PATH, content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 422, body
        header = client.post(
            T2V_PATH, json={"prompt": "x"}, headers={"X-Fal-Queue-Priority": "urgent"}
        )
        assert header.status_code == 422
        assert header.json()["detail"][0]["loc"] == ["header", "x-fal-queue-priority"]


def test_auth_missing_wrong_and_other_keys_requests(server: InProcessServer) -> None:
    anonymous = server.public("POST", T2V_PATH, json={"prompt": "x"})
    assert anonymous.status_code == 401
    assert "detail" in anonymous.json()
    wrong_key = server.key.split(":")[0] + ":" + "0" * 64
    with server.client(wrong_key) as client:
        assert client.post(T2V_PATH, json={"prompt": "x"}).status_code == 401
    bearer = server.public(
        "GET",
        f"{REQUESTS_PATH}/nope/status",
        headers={"Authorization": f"Bearer {server.key}"},
    )
    assert bearer.status_code == 404  # Bearer works too; the id does not exist

    with server.key_store() as keys:
        other_key, _ = keys.create("other")
    with server.client() as owner, server.client(other_key) as other:
        sub = submit(owner)
        assert other.get(str(sub["status_url"])).status_code == 404
        assert other.get(str(sub["response_url"])).status_code == 404
        assert other.put(str(sub["cancel_url"])).status_code == 404
        wait_done(owner, str(sub["status_url"]))


def test_status_stream_sends_events_until_completed(server: InProcessServer) -> None:
    with server.client() as client:
        sub = submit(client)
        events = []
        with client.stream("GET", f"{sub['status_url']}/stream", params={"logs": 1}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert events[-1]["status"] == "COMPLETED"
        assert {e["status"] for e in events} <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
        assert len(events[-1]["logs"]) == 9  # seed, 4 + 1 first-frame lines, 3 steps


def test_start_deadline_passes_while_queued(server: InProcessServer) -> None:
    with server.client() as client:
        blocker = submit(client, "slow", steps=3)
        late = client.post(
            T2V_PATH, json={"prompt": "x", **SMALL}, headers={"X-Fal-Request-Timeout": "0.3"}
        ).json()
        done = wait_done(client, str(late["status_url"]))
        assert done["error_type"] == "request_timeout"
        assert client.get(str(late["response_url"])).status_code == 504
        wait_done(client, str(blocker["status_url"]))


def test_synchronous_run(server: InProcessServer) -> None:
    with server.client() as client:
        response = client.post(f"/run{T2V_PATH}", json={"prompt": "a rocket", **SMALL, "seed": 3})
        assert response.status_code == 200
        assert response.json()["seed"] == 3


def test_health_ready_and_openapi(server: InProcessServer) -> None:
    assert server.public("GET", "/health").json() == {"status": "ok"}
    assert server.public("GET", "/ready").json()["workers_ready"] == 1
    spec = server.public("GET", "/openapi.json").json()
    assert f"{REQUESTS_PATH}/{{request_id}}/status" in spec["paths"]
    schema = spec["components"]["schemas"]["TextToVideoInput"]
    assert schema["properties"]["motion_bucket_id"]["default"] == 127


def test_image_urls_that_may_not_be_fetched_are_refused_at_submit(server: InProcessServer) -> None:
    with server.client() as client:
        for url in (
            "https://127.0.0.1/a.png",
            "https://[::1]/a.png",
            "https://169.254.169.254/latest/meta-data/",
            "http://example.com/a.png",  # plain http is for development servers only
        ):
            answer = client.post("/fal-ai/fast-svd", json={"image_url": url})
            assert answer.status_code == 422, url
            assert answer.json()["detail"][0]["loc"] == ["body", "image_url"]


def test_prometheus_metrics(server: InProcessServer) -> None:
    with server.client() as client:
        done = submit(client)
        wait_done(client, str(done["status_url"]))
    text = server.public("GET", "/metrics").text
    t2v = "fal-ai/fast-svd/text-to-video"
    assert f'fastsvd_queue_depth{{endpoint="{t2v}",priority="0"}} 0.0' in text
    assert f'fastsvd_jobs_running{{endpoint="{t2v}",priority="1"}} 0.0' in text
    assert f'fastsvd_jobs_completed_total{{endpoint="{t2v}",outcome="ok"}} ' in text
    assert "fastsvd_workers_ready 1.0" in text
    assert f'fastsvd_endpoint_workers_ready{{endpoint="{t2v}"}} 1.0' in text
    assert server.key.split(":")[1] not in text


def test_unknown_fal_headers_are_accepted_and_idempotency_keys_honoured(
    server: InProcessServer,
) -> None:
    headers = {
        "X-Fal-Runner-Hint": "gpu-3",
        "X-Fal-No-Retry": "1",
        "X-Fal-Store-IO": "0",
        "X-Fal-Object-Lifecycle-Preference": '{"expiration_duration_seconds": 60}',
        "X-Fal-Something-New": "whatever",
        "Idempotency-Key": "order-42",
    }
    with server.client() as client:
        first = client.post(T2V_PATH, json={"prompt": "a", **SMALL}, headers=headers)
        again = client.post(T2V_PATH, json={"prompt": "a", **SMALL}, headers=headers)
        assert first.status_code == again.status_code == 200
        assert first.json()["request_id"] == again.json()["request_id"]
        too_long = client.post(
            T2V_PATH, json={"prompt": "a"}, headers={"Idempotency-Key": "x" * 201}
        )
        assert too_long.status_code == 422
        assert too_long.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
        wait_done(client, first.json()["status_url"])


def test_history_lists_a_keys_own_requests_newest_first(server: InProcessServer) -> None:
    with server.key_store() as keys:
        other_key, _ = keys.create("history")
    with server.client() as client, server.client(other_key) as other:
        first = submit(client, "first of two")
        second = submit(client, "second of two")
        wait_done(client, str(second["status_url"]))
        listed = client.get(REQUESTS_PATH, params={"limit": 2})
        assert listed.status_code == 200
        items = listed.json()["requests"]
        assert [i["request_id"] for i in items] == [second["request_id"], first["request_id"]]
        assert items[0]["input"]["prompt"] == "second of two"
        assert items[0]["input"]["steps"] == 3  # as validated, defaults filled in
        assert items[0]["status"] == "COMPLETED"
        assert items[0]["output"]["video"]["url"].startswith(server.url + "/files/")
        assert other.get(REQUESTS_PATH).json() == {"requests": []}  # another key sees none of them
        for bad in ("0", "101", "many"):
            refused = client.get(REQUESTS_PATH, params={"limit": bad})
            assert refused.status_code == 422
            assert refused.json()["detail"][0]["loc"] == ["query", "limit"]
