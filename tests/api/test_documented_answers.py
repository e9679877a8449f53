"""Every protocol answer is what /openapi.json documents for its route and status: real answers
of the application, in process (``httpx.ASGITransport``, SQLite), each validated against the
schema documented for it, with no field the schema does not name. The job store moves the jobs
through their states, as a worker would; webhook bodies are checked byte for byte."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from starlette.concurrency import run_in_threadpool

from fastsvd import constants as c
from fastsvd.api.app import create_app
from fastsvd.errors import Failure, OutOfMemory, RequestTimeout, WorkerLost
from fastsvd.schema import File, VideoOutput
from fastsvd.services import Services
from fastsvd.settings import Settings
from fastsvd.store.jobs import JobStore
from fastsvd.store.keys import Scope
from fastsvd.webhooks import body_of, dumps

T2V = c.TEXT_TO_VIDEO_ENDPOINT
APP = "/" + "/".join(T2V.split("/")[:2])
SUBMIT, RUN = f"/{T2V}", f"/run/{T2V}"
HISTORY = f"{APP}/requests"
STATUS = f"{APP}/requests/{{request_id}}/status"
STREAM = f"{APP}/requests/{{request_id}}/status/stream"
RESULT = f"{APP}/requests/{{request_id}}"
CANCEL = f"{APP}/requests/{{request_id}}/cancel"
SMALL = {"prompt": "a fox", "video_size": {"width": 64, "height": 64}, "steps": 1}
UNKNOWN = "00000000-0000-0000-0000-000000000000"
# The answers every keyed route documents, each seen once here, on some route; but these three:
UNSEEN = {413, 429, 503}  # a body over 1 MB, a cap reached, a database down
SHARED = {401, 404, 422, *UNSEEN}


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    opened = Services.from_settings(Settings.from_env({"FASTSVD_DATA_DIR": str(tmp_path)}))
    try:
        yield opened
    finally:
        opened.close()


def strict(openapi: dict[str, Any]) -> dict[str, Any]:
    """The components, each object schema closed: an answer may carry only documented fields."""
    components = copy.deepcopy(openapi["components"])
    for schema in components["schemas"].values():
        if "properties" in schema:
            schema.setdefault("additionalProperties", False)
    return components


class Checked:
    """Calls the application and checks each answer against the schema its route documents."""

    def __init__(self, client: httpx.AsyncClient, openapi: dict[str, Any]) -> None:
        self.client = client
        self.openapi = openapi
        self.components = strict(openapi)
        self.seen: set[tuple[str, str, int]] = set()

    def validate(self, template: str, method: str, status: int, body: Any) -> None:
        documented = self.openapi["paths"][template][method]["responses"]
        assert str(status) in documented, f"{method} {template} answered an undocumented {status}"
        schema = documented[str(status)]["content"]["application/json"]["schema"]
        Draft202012Validator({**schema, "components": self.components}).validate(body)

    async def call(
        self, method: str, template: str, request_id: str = "", **kwargs: Any
    ) -> httpx.Response:
        response = await self.client.request(
            method, template.format(request_id=request_id), **kwargs
        )
        self.validate(template, method.lower(), response.status_code, response.json())
        self.seen.add((method.lower(), template, response.status_code))
        return response


def output(job_id: str) -> dict[str, Any]:
    """What a worker stores for a finished video."""
    video = File(url=f"/files/{job_id}.mp4", content_type="video/mp4", file_size=10)
    return VideoOutput(video=video, seed=7).model_dump(mode="json")


def finish(jobs: JobStore, failure: Failure | None = None) -> str:
    """Claim the next job and end it, as a worker would: with an output, or ``failure``."""
    claim = jobs.claim("worker-1", 60.0, [T2V])
    assert claim is not None
    if failure is None:
        assert jobs.complete(claim.job.id, claim.token, output(claim.job.id), 1.5)
    else:
        assert jobs.fail(claim.job.id, claim.token, failure, 0.5)
    return claim.job.id


def test_every_protocol_answer_is_the_documented_one(services: Services) -> None:
    key, _info = services.keys.create("documented", Scope.user)
    app = create_app(services)
    openapi = app.openapi()
    auth = {"authorization": f"Key {key}"}
    jobs = services.jobs

    async def scenario(api: Checked) -> None:
        submitted = (await api.call("POST", SUBMIT, json=SMALL)).json()
        job_id = submitted["request_id"]
        assert submitted["status_url"].endswith(f"{APP}/requests/{job_id}/status")
        queued = (await api.call("GET", STATUS, job_id)).json()
        assert "logs" not in queued  # fal's shape: no logs key while queued, unless asked
        waiting = (await api.call("GET", STATUS, job_id, params={"logs": "1"})).json()
        assert waiting["logs"][0]["level"] == "WARN"  # no worker serves it: it says so
        assert (await api.call("GET", RESULT, job_id)).status_code == 400
        claim = jobs.claim("worker-1", 60.0, [T2V])
        assert claim is not None
        running = (await api.call("GET", STATUS, job_id)).json()
        assert running["logs"] is None  # fal's Python client needs the key
        assert jobs.hand_back(job_id, claim.token, "Xid 79")  # a WARNING line in its log
        await api.call("GET", STATUS, job_id, params={"logs": "true"})
        assert finish(jobs) == job_id
        done = (await api.call("GET", STATUS, job_id, params={"logs": "1"})).json()
        assert "error" not in done
        assert (await api.call("GET", RESULT, job_id)).json()["video"]["url"].startswith("http")
        assert (await api.call("PUT", CANCEL, job_id)).status_code == 400
        stream = await api.client.get(STREAM.format(request_id=job_id))
        events = [line[6:] for line in stream.text.splitlines() if line.startswith("data: ")]
        assert len(events) == 1
        api.validate(STATUS, "get", 200, json.loads(events[0]))

        cancelled = (await api.call("POST", SUBMIT, json=SMALL)).json()["request_id"]
        assert (await api.call("PUT", CANCEL, cancelled)).status_code == 202
        assert (await api.call("GET", RESULT, cancelled)).status_code == 499
        assert (await api.call("GET", STATUS, cancelled)).json()["error_type"] == "cancelled"
        assert (await api.call("PUT", CANCEL, UNKNOWN)).status_code == 404
        for failure, status in [
            (Failure.of(RequestTimeout()), 504),
            (Failure.of(WorkerLost("The worker running this request stopped")), 500),
            (Failure.of(OutOfMemory("out of memory")), 503),
        ]:
            await api.call("POST", SUBMIT, json=SMALL)
            assert (await api.call("GET", RESULT, finish(jobs, failure))).status_code == status

        async def worker() -> str:
            while not await run_in_threadpool(_queued, jobs):
                await asyncio.sleep(0.01)
            return await run_in_threadpool(finish, jobs)

        ran, _ = await asyncio.gather(api.call("POST", RUN, json=SMALL), worker())
        assert ran.json()["seed"] == 7
        history = (await api.call("GET", HISTORY, params={"limit": 10})).json()
        assert len(history["requests"]) == 6
        await api.call("GET", STATUS, UNKNOWN)
        await api.call("POST", SUBMIT, json={**SMALL, "steps": 0})
        await api.call("GET", RESULT, UNKNOWN, headers={"authorization": "Key nobody:wrong"})

    async def run() -> set[tuple[str, str, int]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://in-process", headers=auth
        ) as client:
            api = Checked(client, openapi)
            await scenario(api)
            return api.seen

    seen = asyncio.run(run())
    assert {status for _m, _t, status in seen} >= SHARED - UNSEEN
    for template in (SUBMIT, RUN, HISTORY, STATUS, RESULT, CANCEL):
        for method, operation in openapi["paths"][template].items():
            documented = {int(s) for s in operation["responses"]} - SHARED
            answered = {s for m, t, s in seen if (m, t) == (method, template)}
            if template == RUN:  # the sync route's failures are the result route's, seen there
                documented = {200}
            assert documented <= answered, f"{method} {template}: never saw {documented - answered}"


def _queued(jobs: JobStore) -> bool:
    return any(job.state == "queued" for job in jobs.recent(None, 1))


def test_webhook_bodies_are_fals_byte_for_byte(services: Services) -> None:
    jobs = services.jobs
    base = "http://api.example"
    for _ in range(2):
        jobs.submit(key_id="k", endpoint=T2V, input=SMALL, base_url=base, webhook_url=base)
    ok = jobs.get(finish(jobs))
    failed = jobs.get(finish(jobs, Failure.of(RequestTimeout())))
    assert ok is not None
    assert failed is not None
    video = output(ok.id)["video"]
    assert (
        dumps(body_of(ok))
        == (
            f'{{"request_id":"{ok.id}","gateway_request_id":"{ok.id}","status":"OK",'
            f'"payload":{{"video":{{"url":"{base}/files/{ok.id}.mp4","content_type":"video/mp4",'
            f'"file_name":{json.dumps(video["file_name"])},"file_size":10}},"seed":7}}}}'
        ).encode()
    )
    assert (
        dumps(body_of(failed))
        == (
            f'{{"request_id":"{failed.id}","gateway_request_id":"{failed.id}","status":"ERROR",'
            '"error":"Invalid status code: 504","error_type":"request_timeout",'
            '"payload":{"detail":"Request start timeout exceeded"}}'
        ).encode()
    )
