"""fal's queue protocol and synchronous runs, made from the endpoint registry.

For every endpoint: ``POST /{id}`` (submit) and ``POST /run/{id}`` (run and wait). For every app
(``owner/app``) among them: ``requests`` (a key's history), and ``requests/{id}`` with
``/status``, ``/status/stream`` and ``/cancel``. Request ids are unique across apps, so any app's
routes find any of the caller's requests, as fal's clients expect whichever app they name.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from fastsvd import constants as c
from fastsvd.api import deps, responses
from fastsvd.api.body import StrictJSONRoute
from fastsvd.api.deps import BaseURL, KeyDep, ServicesDep, owner_of
from fastsvd.api.files import check_image_url
from fastsvd.api.status import no_worker_line, status_body, summary, urls
from fastsvd.endpoints import Endpoint, Registry
from fastsvd.errors import NotFound
from fastsvd.net.guard import check_url
from fastsvd.schema import RequestHistory, absolute_output
from fastsvd.services import Services
from fastsvd.store.jobs import START_TIMEOUT, CancelOutcome, Job, JobState
from fastsvd.store.keys import KeyInfo

WebhookQuery = Annotated[
    str | None,
    Query(
        max_length=c.WEBHOOK_URL_MAX_CHARS,
        description="A public http(s) URL that receives the result once the request finishes.",
    ),
]
LogsQuery = Annotated[str | None, Query()]
SSE_KEEPALIVE_S = 15.0
STREAM_POLL_S = 0.1
CANCEL_CODES = {
    CancelOutcome.requested: 202,
    CancelOutcome.already_completed: 400,
    CancelOutcome.not_found: 404,
}


def router(endpoints: Registry) -> APIRouter:
    """The queue and sync routes of every endpoint in ``endpoints``."""
    api = APIRouter(route_class=StrictJSONRoute)
    for endpoint in endpoints:
        api.add_api_route(
            endpoint.path,
            _typed(_submit_route(endpoint), endpoint.input),
            methods=["POST"],
            tags=["queue"],
            summary=f"Submit {endpoint.summary}",
            name=f"submit {endpoint.id}",
            responses=responses.SUBMITTED,
        )
        api.add_api_route(
            f"/run{endpoint.path}",
            _typed(_run_route(endpoint), endpoint.input),
            methods=["POST"],
            tags=["sync"],
            summary=f"Run {endpoint.summary}",
            name=f"run {endpoint.id}",
            responses=responses.result(endpoint.output),
        )
    for app in endpoints.apps():
        _add_request_routes(api, f"/{app}")
    return api


Route = Callable[..., Awaitable[JSONResponse]]


def _typed(route: Route, body: type[BaseModel]) -> Route:
    """``route`` with its ``body`` parameter declared as the endpoint's input model."""
    route.__annotations__ = {**route.__annotations__, "body": body}
    return route


def _submit_route(endpoint: Endpoint) -> Route:
    async def submit(
        request: Request,
        body: BaseModel,
        s: ServicesDep,
        key: KeyDep,
        base: BaseURL,
        fal_webhook: WebhookQuery = None,
    ) -> JSONResponse:
        job = await enqueue(request, s, key, base, endpoint, body, fal_webhook)
        position = await run_in_threadpool(s.jobs.queue_position, job)
        content = {
            "status": "IN_QUEUE",
            "request_id": job.id,
            "gateway_request_id": job.id,
            **urls(base, job),
            "queue_position": position,
        }
        return JSONResponse(content, headers={"x-fal-request-id": job.id})

    return submit


def _run_route(endpoint: Endpoint) -> Route:
    async def run(
        request: Request, body: BaseModel, s: ServicesDep, key: KeyDep, base: BaseURL
    ) -> JSONResponse:
        job = await enqueue(request, s, key, base, endpoint, body, None)
        delay = 0.02
        while True:
            current = await run_in_threadpool(s.jobs.get, job.id)
            if current is not None and current.state == JobState.completed:
                return result_response(current, base)
            if await request.is_disconnected():
                await run_in_threadpool(s.jobs.request_cancel, job.id, None)
                return JSONResponse({"detail": "client disconnected"}, status_code=499)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    return run


async def enqueue(
    request: Request,
    s: Services,
    key: KeyInfo,
    base: str,
    endpoint: Endpoint,
    body: BaseModel,
    fal_webhook: str | None,
) -> Job:
    """Check what only the server can check (URLs), then queue ``body`` for ``endpoint``."""
    if endpoint.image_field is not None:
        await run_in_threadpool(check_image_url, getattr(body, endpoint.image_field), s)
    if fal_webhook is not None:
        await run_in_threadpool(
            check_url, fal_webhook, "fal_webhook", allow_private=s.settings.allow_private_urls
        )
    job, _new = await run_in_threadpool(
        s.jobs.submit,
        key_id=key.key_id,
        endpoint=endpoint.id,
        input=body.model_dump(mode="json"),
        priority=deps.priority(request),
        start_deadline_at=deps.start_deadline(request),
        webhook_url=fal_webhook,
        idempotency_key=deps.idempotency_key(request),
        base_url=base,
        output_lifetime_s=deps.output_lifetime(request, s.settings.retention_s),
        no_retry=deps.no_retry(request),
    )
    s.waker.wake_all()
    return job


def result_response(job: Job, base: str) -> JSONResponse:
    """A completed job's output (or its error, with its status); 400 while it runs."""
    headers = {"x-fal-request-id": job.id}
    if job.state != JobState.completed:
        return JSONResponse(
            {"detail": "Request is still in progress"}, status_code=400, headers=headers
        )
    if job.output is None:
        headers["x-fal-error-type"] = job.error_type or "internal_error"
        if job.error_type == START_TIMEOUT.error_type:
            headers["x-fal-request-timeout-type"] = "user"  # the caller's deadline: no retry
        return JSONResponse(
            {"detail": job.error, "error_type": job.error_type},
            status_code=job.http_status or 500,
            headers=headers,
        )
    return JSONResponse(absolute_output(job.output, base), headers=headers)


async def _status_of(
    s: Services, job_id: str, key: KeyInfo, base: str, with_logs: bool
) -> tuple[Job, dict[str, Any]]:
    scope = owner_of(key, s)

    def read() -> tuple[Job, dict[str, Any]]:
        view = s.jobs.view(job_id, scope, with_logs=with_logs)
        if view is None:
            raise NotFound(f"Request {job_id} not found")
        job, position, logs = view
        waiting = None
        queued = job.state == JobState.queued and logs is not None
        if queued and not s.roster.serves(job.endpoint, s.settings.serving_window_s):
            waiting = no_worker_line(job.endpoint)  # say why, when no one can run it
        return job, status_body(job, base, queue_position=position, logs=logs, waiting=waiting)

    if s.db.cheap_reads:  # this path runs for every poll of every client
        return read()
    return await run_in_threadpool(read)


def _add_request_routes(api: APIRouter, app_path: str) -> None:
    @api.get(
        f"{app_path}/requests",
        tags=["queue"],
        summary="This key's recent requests (fastsvd)",
        responses={200: {"model": RequestHistory}, **responses.ERRORS},
    )
    async def history(
        s: ServicesDep,
        key: KeyDep,
        base: BaseURL,
        limit: Annotated[int, Query(ge=1, le=c.HISTORY_MAX)] = c.HISTORY_DEFAULT,
    ) -> JSONResponse:
        recent = await run_in_threadpool(s.jobs.recent, owner_of(key, s), limit)
        return JSONResponse(
            RequestHistory(requests=[summary(job, base) for job in recent]).model_dump(mode="json")
        )

    @api.get(
        f"{app_path}/requests/{{request_id}}/status",
        tags=["queue"],
        summary="Status",
        responses=responses.STATUS,
    )
    async def status(
        request_id: str, s: ServicesDep, key: KeyDep, base: BaseURL, logs: LogsQuery = None
    ) -> JSONResponse:
        job, body = await _status_of(s, request_id, key, base, deps.truthy(logs))
        return JSONResponse(body, status_code=200 if job.state == JobState.completed else 202)

    @api.get(
        f"{app_path}/requests/{{request_id}}/status/stream",
        tags=["queue"],
        summary="Status as server-sent events",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "One `data:` event per change of the status body, until COMPLETED",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **responses.ERRORS,
        },
    )
    async def status_stream(
        request: Request,
        request_id: str,
        s: ServicesDep,
        key: KeyDep,
        base: BaseURL,
        logs: LogsQuery = None,
    ) -> StreamingResponse:
        with_logs = deps.truthy(logs)
        job, first = await _status_of(s, request_id, key, base, with_logs)

        async def events() -> AsyncIterator[str]:
            current, body = job, first
            last: dict[str, Any] | None = None
            last_sent = time.monotonic()
            while True:
                if body != last:
                    yield f"data: {json.dumps(body)}\n\n"
                    last, last_sent = body, time.monotonic()
                if current.state == JobState.completed or await request.is_disconnected():
                    return
                if time.monotonic() - last_sent > SSE_KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    last_sent = time.monotonic()
                await asyncio.sleep(STREAM_POLL_S)
                current, body = await _status_of(s, request_id, key, base, with_logs)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-fal-request-id": job.id},
        )

    @api.get(
        f"{app_path}/requests/{{request_id}}",
        tags=["queue"],
        summary="Result",
        responses=responses.result(),
    )
    async def result(request_id: str, s: ServicesDep, key: KeyDep, base: BaseURL) -> JSONResponse:
        job = await run_in_threadpool(s.jobs.get, request_id, owner_of(key, s))
        if job is None:
            raise NotFound(f"Request {request_id} not found")
        return result_response(job, base)

    @api.put(
        f"{app_path}/requests/{{request_id}}/cancel",
        tags=["queue"],
        summary="Cancel",
        responses=responses.CANCEL,
    )
    async def cancel(request_id: str, s: ServicesDep, key: KeyDep) -> JSONResponse:
        outcome = await run_in_threadpool(s.jobs.request_cancel, request_id, owner_of(key, s))
        return JSONResponse({"status": outcome.value}, status_code=CANCEL_CODES[outcome])
