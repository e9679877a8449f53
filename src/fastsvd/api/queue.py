"""fal's queue protocol and synchronous runs, made from the endpoint registry.

For every endpoint: ``POST /{id}`` (submit) and ``POST /run/{id}`` (run and wait). For every app
(``owner/app``) among them: ``requests`` (a key's history), and ``requests/{id}`` with
``/status``, ``/status/stream`` and ``/cancel``. Request ids are unique across apps, so any app's
routes find any of the caller's requests, as fal's clients expect whichever app they name.

Every answer is a model of ``fastsvd.schema`` (built in ``fastsvd.api.status``): a route's
success is its response model (its return annotation, or ``response_model`` where the route
answers the model's dump itself, with its own status and headers), its other answers are in
``fastsvd.api.responses``; so /openapi.json documents what the routes send.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from fastsvd import constants as c
from fastsvd.api import deps, responses
from fastsvd.api.body import StrictJSONRoute
from fastsvd.api.deps import BaseURL, KeyDep, ServicesDep, owner_of
from fastsvd.api.files import check_image_url
from fastsvd.api.status import error_of, no_worker_line, output_of, status_of, submitted, summary
from fastsvd.endpoints import Endpoint, Registry
from fastsvd.errors import Cancelled, NotFound, RequestTimeout, http_status
from fastsvd.net.guard import check_url
from fastsvd.schema import (
    CancelResponse,
    ErrorResponse,
    QueueStatus,
    RequestHistory,
    SubmitResponse,
)
from fastsvd.services import Services
from fastsvd.store.jobs import CancelOutcome, Job, JobState
from fastsvd.store.keys import KeyInfo

WebhookQuery = Annotated[
    str | None,
    Query(
        max_length=c.WEBHOOK_URL_MAX_CHARS,
        description="A public http(s) URL that receives the result once the request finishes.",
    ),
]
LogsQuery = Annotated[str | None, Query()]
CANCEL_CODES = {
    CancelOutcome.requested: 202,
    CancelOutcome.already_completed: 400,
    CancelOutcome.not_found: http_status(NotFound),
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
            response_model=SubmitResponse,
            responses=responses.SUBMITTED,
        )
        api.add_api_route(
            f"/run{endpoint.path}",
            _typed(_run_route(endpoint), endpoint.input),
            methods=["POST"],
            tags=["sync"],
            summary=f"Run {endpoint.summary}",
            name=f"run {endpoint.id}",
            response_model=endpoint.output,
            responses=responses.result(endpoint.output),
        )
    for app in endpoints.apps():
        _add_request_routes(api, f"/{app}", _output_of_app(endpoints, app))
    return api


def _output_of_app(endpoints: Registry, app: str) -> type[BaseModel]:
    """The output model of ``app``'s endpoints: its result route's answer."""
    outputs = {e.output for e in endpoints if e.app == app}
    if len(outputs) != 1:
        raise ValueError(f"the endpoints of {app} have different output models")
    return outputs.pop()


Route = Callable[..., Awaitable[Any]]


def _typed(route: Route, body: type[BaseModel]) -> Route:
    """``route`` with its ``body`` parameter declared as the endpoint's input model."""
    route.__annotations__ = {**route.__annotations__, "body": body}
    return route


def _submit_route(endpoint: Endpoint) -> Route:
    async def submit(
        request: Request,
        response: Response,
        body: BaseModel,
        services: ServicesDep,
        key: KeyDep,
        base: BaseURL,
        fal_webhook: WebhookQuery = None,
    ) -> SubmitResponse:
        job, position = await enqueue(request, services, key, base, endpoint, body, fal_webhook)
        response.headers["x-fal-request-id"] = job.id
        return submitted(job, base, position)

    return submit


def _run_route(endpoint: Endpoint) -> Route:
    async def run(
        request: Request, body: BaseModel, services: ServicesDep, key: KeyDep, base: BaseURL
    ) -> JSONResponse:
        job, _position = await enqueue(request, services, key, base, endpoint, body, None)
        delay = c.RUN_POLL_FIRST_S
        while True:
            current = await run_in_threadpool(services.jobs.get, job.id)
            if current is not None and current.state == JobState.completed:
                return result_response(current, base, endpoint.output)
            if await request.is_disconnected():
                await run_in_threadpool(services.jobs.request_cancel, job.id, None)
                raise Cancelled("client disconnected")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, c.RUN_POLL_MAX_S)

    return run


async def enqueue(
    request: Request,
    services: Services,
    key: KeyInfo,
    base: str,
    endpoint: Endpoint,
    body: BaseModel,
    fal_webhook: str | None,
) -> tuple[Job, int]:
    """Check what only the server can check (URLs), then queue ``body`` for ``endpoint``.
    Returns the job and its place in the queue."""
    if endpoint.image_field is not None:
        await run_in_threadpool(check_image_url, getattr(body, endpoint.image_field), services)
    if fal_webhook is not None:
        await run_in_threadpool(
            check_url,
            fal_webhook,
            "fal_webhook",
            allow_private=services.settings.allow_private_urls,
        )
    submit = functools.partial(
        services.jobs.submit,
        key_id=key.key_id,
        endpoint=endpoint.id,
        input=body.model_dump(mode="json"),
        priority=deps.priority(request),
        start_deadline_at=deps.start_deadline(request),
        webhook_url=fal_webhook,
        idempotency_key=deps.idempotency_key(request),
        base_url=base,
        output_lifetime_s=deps.output_lifetime(request, services.settings.retention_s),
        no_retry=deps.no_retry(request),
    )

    def queue() -> tuple[Job, int]:  # one hop to a thread for both
        job, _new = submit()
        return job, services.jobs.queue_position(job)

    queued = await run_in_threadpool(queue)
    services.waker.wake_one()
    return queued


def result_response(job: Job, base: str, output: type[BaseModel]) -> JSONResponse:
    """A completed job's output as ``output``, the route's response model (or its error, with
    its status); 400 while it runs."""
    headers = {"x-fal-request-id": job.id}
    if job.state != JobState.completed:
        running = ErrorResponse(detail="Request is still in progress")
        body = running.model_dump(exclude_unset=True)
        return JSONResponse(body, status_code=400, headers=headers)
    if job.output is None:
        headers["x-fal-error-type"] = job.error_type or "internal_error"
        if job.error_type == RequestTimeout.error_type:
            headers["x-fal-request-timeout-type"] = "user"  # the caller's deadline: no retry
        return JSONResponse(
            error_of(job).model_dump(mode="json"),
            status_code=job.http_status or 500,
            headers=headers,
        )
    return JSONResponse(output_of(job, base, output).model_dump(mode="json"), headers=headers)


async def _status_of(
    services: Services, job_id: str, key: KeyInfo, base: str, with_logs: bool
) -> tuple[Job, QueueStatus]:
    scope = owner_of(key, services)

    def read() -> tuple[Job, QueueStatus]:
        view = services.jobs.view(job_id, scope, with_logs=with_logs)
        if view is None:
            raise NotFound(f"Request {job_id} not found")
        job, position, logs = view
        waiting = None
        queued = job.state == JobState.queued and logs is not None
        if queued and not services.roster.serves(job.endpoint, services.settings.serving_window_s):
            waiting = no_worker_line(job.endpoint)  # say why, when no one can run it
        return job, status_of(job, base, queue_position=position, logs=logs, waiting=waiting)

    if services.db.cheap_reads:  # this path runs for every poll of every client
        return read()
    return await run_in_threadpool(read)


def _add_request_routes(api: APIRouter, app_path: str, output: type[BaseModel]) -> None:
    @api.get(
        f"{app_path}/requests",
        tags=["queue"],
        summary="This key's recent requests (fastsvd)",
        responses=responses.ERRORS,
    )
    async def history(
        services: ServicesDep,
        key: KeyDep,
        base: BaseURL,
        limit: Annotated[int, Query(ge=1, le=c.HISTORY_MAX)] = c.HISTORY_DEFAULT,
    ) -> RequestHistory:
        recent = await run_in_threadpool(services.jobs.recent, owner_of(key, services), limit)
        return RequestHistory(requests=[summary(job, base) for job in recent])

    @api.get(
        f"{app_path}/requests/{{request_id}}/status",
        tags=["queue"],
        summary="Status",
        response_model_exclude_unset=True,
        responses=responses.STATUS,
    )
    async def status(
        request_id: str,
        response: Response,
        services: ServicesDep,
        key: KeyDep,
        base: BaseURL,
        logs: LogsQuery = None,
    ) -> QueueStatus:
        job, body = await _status_of(services, request_id, key, base, deps.truthy(logs))
        response.status_code = 200 if job.state == JobState.completed else 202
        return body

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
        services: ServicesDep,
        key: KeyDep,
        base: BaseURL,
        logs: LogsQuery = None,
    ) -> StreamingResponse:
        with_logs = deps.truthy(logs)
        job, first = await _status_of(services, request_id, key, base, with_logs)

        async def events() -> AsyncIterator[str]:
            current, status = job, first
            last: dict[str, Any] | None = None
            last_sent = time.monotonic()
            while True:
                body = status.model_dump(mode="json", exclude_unset=True)
                if body != last:
                    yield f"data: {json.dumps(body)}\n\n"
                    last, last_sent = body, time.monotonic()
                if current.state == JobState.completed or await request.is_disconnected():
                    return
                if time.monotonic() - last_sent > c.SSE_KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    last_sent = time.monotonic()
                await asyncio.sleep(c.STREAM_POLL_S)
                current, status = await _status_of(services, request_id, key, base, with_logs)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-fal-request-id": job.id},
        )

    @api.get(
        f"{app_path}/requests/{{request_id}}",
        tags=["queue"],
        summary="Result",
        response_model=output,
        responses=responses.result(output),
    )
    async def result(
        request_id: str, services: ServicesDep, key: KeyDep, base: BaseURL
    ) -> JSONResponse:
        job = await run_in_threadpool(services.jobs.get, request_id, owner_of(key, services))
        if job is None:
            raise NotFound(f"Request {request_id} not found")
        return result_response(job, base, output)

    @api.put(
        f"{app_path}/requests/{{request_id}}/cancel",
        tags=["queue"],
        summary="Cancel",
        status_code=202,  # its usual answer; see CANCEL_CODES
        responses=responses.CANCEL,
    )
    async def cancel(
        request_id: str, response: Response, services: ServicesDep, key: KeyDep
    ) -> CancelResponse:
        outcome = await run_in_threadpool(
            services.jobs.request_cancel, request_id, owner_of(key, services)
        )
        response.status_code = CANCEL_CODES[outcome]
        return CancelResponse.model_validate({"status": outcome.value})
