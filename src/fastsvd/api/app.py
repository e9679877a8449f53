"""The FastAPI application: fal's queue protocol, synchronous runs, files, health.

Routes call the stores; they never import the pipeline. Errors become fal-style bodies
(``{"detail": ...}``) in the exception handlers at the bottom; no input a client can send makes
a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastsvd import __version__, media
from fastsvd import constants as c
from fastsvd.api.auth import (
    Forbidden,
    RateLimits,
    Unauthorized,
    admin_key,
    credentials,
    current_key,
)
from fastsvd.api.limits import JSON_BODY_MAX_BYTES, BodyLimit, RateLimited
from fastsvd.api.metrics import render as render_metrics
from fastsvd.api.proxy import FalProxy
from fastsvd.api.services import Services
from fastsvd.api.status import APP_PATH, status_body, summary, urls
from fastsvd.errors import InvalidInput
from fastsvd.fetch import url_schemes
from fastsvd.netguard import check_url
from fastsvd.schema import (
    CancelResponse,
    CreatedKey,
    ErrorResponse,
    ImageToVideoInput,
    KeyList,
    KeyRequest,
    KeySummary,
    QueueStatus,
    ReadyResponse,
    RequestHistory,
    SubmitResponse,
    TextToVideoInput,
    VideoOutput,
    absolute_output,
)
from fastsvd.storage import LocalStorage, RangeNotSatisfiable
from fastsvd.store.db import is_unavailable
from fastsvd.store.files import new_file_id
from fastsvd.store.jobs import CancelOutcome, Job, JobState, QueueFull
from fastsvd.store.keys import KeyInfo, Scope

log = logging.getLogger("fastsvd.api")

KeyDep = Annotated[KeyInfo, Depends(current_key)]
AdminDep = Annotated[KeyInfo, Depends(admin_key)]
WebhookQuery = Annotated[
    str | None,
    Query(
        max_length=c.WEBHOOK_URL_MAX_CHARS,
        description="A public http(s) URL that receives the result once the request finishes.",
    ),
]

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}
# Answers any route with a key can give: every one of them is documented, so that clients (and
# the schema fuzzer in tests/security) can rely on the schema.
_KEYED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    422: {"model": ErrorResponse, "description": "Invalid input: fal's detail list"},
    429: {
        "model": ErrorResponse,
        "description": "Too many requests, or a queue cap reached: retry after Retry-After",
        "headers": _RETRY_AFTER,
    },
    503: {
        "model": ErrorResponse,
        "description": "The job store is unavailable: retry after Retry-After",
        "headers": _RETRY_AFTER,
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such request for this key"},
    **_KEYED,
}
_TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "The body is over its size limit"},
}
SUBMITTED: dict[int | str, dict[str, Any]] = {
    200: {"model": SubmitResponse, "description": "Queued"},
    **_TOO_LARGE,
    **_KEYED,
}
ADMIN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "The key lacks the admin scope"},
    **_KEYED,
}
STATUS: dict[int | str, dict[str, Any]] = {
    200: {"model": QueueStatus, "description": "COMPLETED"},
    202: {"model": QueueStatus, "description": "IN_QUEUE or IN_PROGRESS"},
    **_ERRORS,
}
RESULT: dict[int | str, dict[str, Any]] = {
    200: {"model": VideoOutput, "description": "The output"},
    400: {"model": ErrorResponse, "description": "Not finished yet"},
    499: {"model": ErrorResponse, "description": "Cancelled"},
    500: {"model": ErrorResponse, "description": "The model failed (error_type says why)"},
    504: {"model": ErrorResponse, "description": "Did not start before its start deadline"},
    **_ERRORS,
}
CANCEL: dict[int | str, dict[str, Any]] = {
    202: {"model": CancelResponse, "description": "CANCELLATION_REQUESTED"},
    400: {"model": CancelResponse, "description": "ALREADY_COMPLETED"},
    404: {"model": CancelResponse, "description": "NOT_FOUND"},
    **_KEYED,
}
PLAYGROUND = Path(__file__).with_name("playground.html")  # the web page at /: no build step
SSE_KEEPALIVE_S = 15.0
STREAM_POLL_S = 0.1


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes")


def _priority(request: Request) -> int:
    value = request.headers.get("x-fal-queue-priority", "normal").strip().lower()
    if value not in ("normal", "low", "high"):
        raise InvalidInput("x-fal-queue-priority", "must be normal or low")
    return 1 if value == "low" else 0  # priority can only be lowered, as on fal


def _idempotency_key(request: Request) -> str | None:
    value = request.headers.get("idempotency-key")
    if value is not None and not 0 < len(value) <= c.IDEMPOTENCY_KEY_MAX_CHARS:
        raise InvalidInput("idempotency-key", f"must be 1-{c.IDEMPOTENCY_KEY_MAX_CHARS} characters")
    return value


def _start_deadline(request: Request) -> float | None:
    raw = request.headers.get("x-fal-request-start-timeout") or request.headers.get(
        "x-fal-request-timeout"
    )
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidInput("x-fal-request-timeout", "must be a number of seconds") from None
    if not 0 < seconds < 7 * 24 * 3600:
        raise InvalidInput("x-fal-request-timeout", "must be between 0 and 604800 seconds")
    return time.time() + seconds


def check_image_url(url: str, services: Services) -> None:
    """Refuse at submit an ``image_url`` the worker would not be allowed to fetch or read.

    A data: URI is decoded and its picture's header read (never its pixels); a URL's host is
    resolved and checked. What only the download can show (a redirect to a blocked address, a
    body too large or too slow, a corrupt picture) fails the request later with the same 422.
    """
    if url.startswith("data:"):
        media.check_image(media.decode_data_uri(url, "image_url")[1], "image_url")
        return
    try:
        parts = urllib.parse.urlsplit(url).path.split("/")
    except ValueError:
        raise InvalidInput("image_url", "not a valid URL") from None
    uploaded_here = len(parts) >= 3 and parts[1] == "files" and parts[2].isalnum()
    if uploaded_here and services.files.get(parts[2]) is not None:
        return  # a file uploaded here: read from storage, never fetched
    settings = services.settings
    check_url(
        url,
        "image_url",
        schemes=url_schemes(settings.allow_private_urls),
        allow_private=settings.allow_private_urls,
    )


def create_app(services: Services) -> FastAPI:
    """The application, bound to ``services``."""
    app = FastAPI(
        title="fastsvd",
        version=__version__,
        description=(
            "Self-hosted, fal-compatible Stable Video Diffusion: fal's queue protocol for "
            f"`{c.TEXT_TO_VIDEO_ENDPOINT}` and `{c.IMAGE_TO_VIDEO_ENDPOINT}` (image-to-video)."
        ),
    )
    app.state.services = services
    app.state.limits = RateLimits(
        services.settings.requests_per_s, services.settings.auth_failures_per_s
    )
    app.add_middleware(
        BodyLimit,
        max_bytes=JSON_BODY_MAX_BYTES,
        own_limit=("/files/upload", "/storage/upload/"),
    )
    app.add_middleware(FalProxy)  # outermost: the body limit sees the route it names
    s = services

    async def submit(
        request: Request,
        key: KeyInfo,
        endpoint: str,
        body: TextToVideoInput | ImageToVideoInput,
        fal_webhook: str | None,
    ) -> JSONResponse:
        base = _base_url(request)
        if isinstance(body, ImageToVideoInput):
            await run_in_threadpool(check_image_url, body.image_url, s)
        if fal_webhook is not None:
            await run_in_threadpool(
                check_url,
                fal_webhook,
                "fal_webhook",
                allow_private=s.settings.allow_private_urls,
            )
        job, _new = await run_in_threadpool(
            s.jobs.submit,
            key_id=key.key_id,
            endpoint=endpoint,
            input=body.model_dump(mode="json"),
            priority=_priority(request),
            start_deadline_at=_start_deadline(request),
            webhook_url=fal_webhook,
            idempotency_key=_idempotency_key(request),
            base_url=base,
        )
        s.waker.wake_all()
        position = await run_in_threadpool(s.jobs.queue_position, job)
        content = {
            "status": "IN_QUEUE",
            "request_id": job.id,
            "gateway_request_id": job.id,
            **urls(base, job.id),
            "queue_position": position,
        }
        return JSONResponse(content, headers={"x-fal-request-id": job.id})

    @app.post(
        f"{APP_PATH}/text-to-video",
        tags=["queue"],
        summary="Submit text-to-video",
        responses=SUBMITTED,
    )
    async def submit_text_to_video(
        request: Request, body: TextToVideoInput, key: KeyDep, fal_webhook: WebhookQuery = None
    ) -> JSONResponse:
        return await submit(request, key, c.TEXT_TO_VIDEO_ENDPOINT, body, fal_webhook)

    @app.post(APP_PATH, tags=["queue"], summary="Submit image-to-video", responses=SUBMITTED)
    async def submit_image_to_video(
        request: Request, body: ImageToVideoInput, key: KeyDep, fal_webhook: WebhookQuery = None
    ) -> JSONResponse:
        return await submit(request, key, c.IMAGE_TO_VIDEO_ENDPOINT, body, fal_webhook)

    async def own_job(job_id: str, key: KeyInfo) -> Job:
        job = await run_in_threadpool(
            s.jobs.get, job_id, None if not s.settings.auth else key.key_id
        )
        if job is None:
            raise NotFound(f"Request {job_id} not found")
        return job

    async def status_of(
        job_id: str, key: KeyInfo, base: str, with_logs: bool
    ) -> tuple[Job, dict[str, Any]]:
        scope = key.key_id if s.settings.auth else None
        if s.db.cheap_reads:  # this path runs for every poll of every client
            view = s.jobs.view(job_id, scope, with_logs=with_logs)
        else:
            view = await run_in_threadpool(s.jobs.view, job_id, scope, with_logs=with_logs)
        if view is None:
            raise NotFound(f"Request {job_id} not found")
        job, position, logs = view
        return job, status_body(job, base, queue_position=position, logs=logs)

    @app.get(
        f"{APP_PATH}/requests",
        tags=["queue"],
        summary="This key's recent requests (fastsvd)",
        responses={200: {"model": RequestHistory}, **_ERRORS},
    )
    async def history(
        request: Request,
        key: KeyDep,
        limit: Annotated[int, Query(ge=1, le=c.HISTORY_MAX)] = c.HISTORY_DEFAULT,
    ) -> JSONResponse:
        scope = key.key_id if s.settings.auth else None
        recent = await run_in_threadpool(s.jobs.recent, scope, limit)
        base = _base_url(request)
        return JSONResponse(
            RequestHistory(requests=[summary(job, base) for job in recent]).model_dump(mode="json")
        )

    @app.get(
        f"{APP_PATH}/requests/{{request_id}}/status",
        tags=["queue"],
        summary="Status",
        responses=STATUS,
    )
    async def status(
        request: Request, request_id: str, key: KeyDep, logs: str | None = Query(None)
    ) -> JSONResponse:
        job, body = await status_of(request_id, key, _base_url(request), _truthy(logs))
        code = 200 if job.state == JobState.completed else 202
        return JSONResponse(body, status_code=code)

    @app.get(
        f"{APP_PATH}/requests/{{request_id}}/status/stream",
        tags=["queue"],
        summary="Status as server-sent events",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "One `data:` event per change of the status body, until COMPLETED",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_ERRORS,
        },
    )
    async def status_stream(
        request: Request, request_id: str, key: KeyDep, logs: str | None = Query(None)
    ) -> StreamingResponse:
        base, with_logs = _base_url(request), _truthy(logs)
        job, first = await status_of(request_id, key, base, with_logs)

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
                current, body = await status_of(request_id, key, base, with_logs)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-fal-request-id": job.id},
        )

    def result_response(job: Job, base: str) -> JSONResponse:
        headers = {"x-fal-request-id": job.id}
        if job.state != JobState.completed:
            return JSONResponse(
                {"detail": "Request is still in progress"}, status_code=400, headers=headers
            )
        if job.output is None:
            headers["x-fal-error-type"] = job.error_type or "internal_error"
            return JSONResponse(
                {"detail": job.error, "error_type": job.error_type},
                status_code=job.http_status or 500,
                headers=headers,
            )
        return JSONResponse(absolute_output(job.output, base), headers=headers)

    @app.get(
        f"{APP_PATH}/requests/{{request_id}}", tags=["queue"], summary="Result", responses=RESULT
    )
    async def result(request: Request, request_id: str, key: KeyDep) -> JSONResponse:
        return result_response(await own_job(request_id, key), _base_url(request))

    @app.put(
        f"{APP_PATH}/requests/{{request_id}}/cancel",
        tags=["queue"],
        summary="Cancel",
        responses=CANCEL,
    )
    async def cancel(request_id: str, key: KeyDep) -> JSONResponse:
        outcome = await run_in_threadpool(
            s.jobs.request_cancel, request_id, None if not s.settings.auth else key.key_id
        )
        code = {
            CancelOutcome.requested: 202,
            CancelOutcome.already_completed: 400,
            CancelOutcome.not_found: 404,
        }[outcome]
        return JSONResponse({"status": outcome.value}, status_code=code)

    async def run_sync(
        request: Request, key: KeyInfo, endpoint: str, body: TextToVideoInput | ImageToVideoInput
    ) -> JSONResponse:
        submitted = await submit(request, key, endpoint, body, None)
        job_id = json.loads(bytes(submitted.body))["request_id"]
        delay = 0.02
        while True:
            job = await run_in_threadpool(s.jobs.get, job_id)
            if job is not None and job.state == JobState.completed:
                return result_response(job, _base_url(request))
            if await request.is_disconnected():
                await run_in_threadpool(s.jobs.request_cancel, job_id, None)
                return JSONResponse({"detail": "client disconnected"}, status_code=499)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    @app.post(
        f"/run{APP_PATH}/text-to-video",
        tags=["sync"],
        summary="Run text-to-video",
        responses=RESULT,
    )
    async def run_text_to_video(
        request: Request, body: TextToVideoInput, key: KeyDep
    ) -> JSONResponse:
        return await run_sync(request, key, c.TEXT_TO_VIDEO_ENDPOINT, body)

    @app.post(f"/run{APP_PATH}", tags=["sync"], summary="Run image-to-video", responses=RESULT)
    async def run_image_to_video(
        request: Request, body: ImageToVideoInput, key: KeyDep
    ) -> JSONResponse:
        return await run_sync(request, key, c.IMAGE_TO_VIDEO_ENDPOINT, body)

    # --- files ---------------------------------------------------------------------------

    @app.get(
        "/files/{file_id}/{file_name}",
        tags=["files"],
        summary="Download a file",
        responses={
            200: {"description": "The file", "content": {"application/octet-stream": {}}},
            206: {"description": "The requested range of the file"},
            404: {"model": ErrorResponse, "description": "No such file"},
            416: {"description": "The requested range is outside the file"},
        },
    )
    async def download(request: Request, file_id: str, file_name: str) -> Response:
        record = await run_in_threadpool(s.files.get, file_id) if file_id.isalnum() else None
        if record is None or record.file_name != file_name or record.upload_token is not None:
            raise NotFound("File not found")
        if isinstance(s.storage, LocalStorage):
            path = s.storage.path(record.id)
            if not path.is_file():
                raise NotFound("File not found")
            # Starlette answers Range requests (206) itself, so players can seek.
            return FileResponse(path, media_type=record.content_type)
        # An object store: proxied, Range passed through (see docs/deploy.md for why).
        try:
            got = await run_in_threadpool(
                s.storage.download, record.id, request.headers.get("range")
            )
        except RangeNotSatisfiable:
            return Response(status_code=416, headers={"content-range": f"bytes */{record.size}"})
        if got is None:
            raise NotFound("File not found")
        return StreamingResponse(
            iterate_in_threadpool(got.chunks),
            status_code=got.status,
            media_type=record.content_type,
            headers=got.headers,
        )

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > c.UPLOAD_MAX_BYTES:
            raise TooLarge(f"uploads are limited to {c.UPLOAD_MAX_BYTES:,} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > c.UPLOAD_MAX_BYTES:
                raise TooLarge(f"uploads are limited to {c.UPLOAD_MAX_BYTES:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def clean_name(name: str | None, content_type: str) -> str:
        name = (name or "").replace("/", "_").replace("\\", "_").strip()[:200]
        if not name or not all(ch.isalnum() or ch in "._-" for ch in name):
            extension = content_type.split("/")[-1].split(";")[0].strip()
            name = f"upload.{extension}" if extension.isalnum() else "upload.bin"
        return name

    @app.post(
        "/storage/auth/token",
        tags=["files"],
        summary="Upload token (fal-client)",
        responses=_KEYED,
    )
    async def upload_token(request: Request, key: KeyDep) -> JSONResponse:
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        token = credentials(request) or "anonymous"
        return JSONResponse(
            {
                "token": token,
                "token_type": "Key",
                "base_url": _base_url(request),
                "expires_at": expires.isoformat(),
            }
        )

    @app.post(
        "/files/upload",
        tags=["files"],
        summary="Upload a file (fal-client)",
        responses={**_TOO_LARGE, **_KEYED},
    )
    async def upload(request: Request, key: KeyDep) -> JSONResponse:
        data = await read_body(request)
        content_type = request.headers.get("content-type", "application/octet-stream")[:255]
        name = clean_name(request.headers.get("x-fal-file-name"), content_type)
        file_id = new_file_id()
        await run_in_threadpool(s.storage.put, file_id, data, content_type)
        record = await run_in_threadpool(
            s.files.add,
            key_id=key.key_id,
            kind="upload",
            file_name=name,
            content_type=content_type,
            size=len(data),
            retention_s=s.settings.retention_s,
            file_id=file_id,
        )
        url = _base_url(request) + record.path
        return JSONResponse({"access_url": url, "content_type": content_type, "file_name": name})

    @app.post(
        "/storage/upload/initiate",
        tags=["files"],
        summary="Start an upload (fal JS)",
        responses={**_TOO_LARGE, **_KEYED},
    )
    async def upload_initiate(
        request: Request, key: KeyDep, body: Annotated[dict[str, Any], Body()]
    ) -> JSONResponse:
        content_type = str(body.get("content_type") or "application/octet-stream")[:255]
        name = clean_name(str(body.get("file_name") or ""), content_type)
        token = secrets.token_hex(16)
        record = await run_in_threadpool(
            s.files.add,
            key_id=key.key_id,
            kind="upload",
            file_name=name,
            content_type=content_type,
            size=0,
            retention_s=s.settings.retention_s,
            upload_token=token,
        )
        base = _base_url(request)
        return JSONResponse(
            {
                "upload_url": f"{base}/storage/upload/{record.id}?token={token}",
                "file_url": base + record.path,
            }
        )

    @app.put(
        "/storage/upload/{file_id}",
        tags=["files"],
        summary="Send an initiated upload",
        responses={
            404: {"model": ErrorResponse, "description": "No upload is waiting at this URL"},
            **_TOO_LARGE,
        },
    )
    async def upload_put(request: Request, file_id: str, token: str = Query("")) -> JSONResponse:
        record = await run_in_threadpool(s.files.get, file_id) if file_id.isalnum() else None
        expected = record.upload_token if record is not None else None
        if record is None or expected is None or not secrets.compare_digest(expected, token):
            raise NotFound("No upload is waiting at this URL")
        data = await read_body(request)
        await run_in_threadpool(s.storage.put, record.id, data, record.content_type)
        await run_in_threadpool(s.files.uploaded, record.id, len(data))
        return JSONResponse({"file_url": _base_url(request) + record.path})

    # --- keys (admin scope) ---------------------------------------------------------------

    def summary_of(info: KeyInfo) -> KeySummary:
        return KeySummary(
            key_id=info.key_id,
            name=info.name,
            scope=info.scope.value,
            created_at=info.created_at,
            revoked_at=info.revoked_at,
        )

    @app.get("/admin/keys", tags=["admin"], summary="List API keys", responses=ADMIN)
    async def list_keys(_admin: AdminDep) -> KeyList:
        keys = await run_in_threadpool(s.keys.list)
        return KeyList(keys=[summary_of(info) for info in keys])

    @app.post(
        "/admin/keys",
        tags=["admin"],
        summary="Create an API key",
        status_code=201,
        responses={**_TOO_LARGE, **ADMIN},
    )
    async def create_key(body: KeyRequest, _admin: AdminDep) -> CreatedKey:
        key, info = await run_in_threadpool(s.keys.create, body.name, Scope(body.scope))
        listed = summary_of(info).model_dump()
        return CreatedKey(**listed, key=key, webhook_secret=info.webhook_secret)

    @app.delete(
        "/admin/keys/{key_id}",
        tags=["admin"],
        summary="Revoke an API key",
        responses={404: {"model": ErrorResponse, "description": "No such live key"}, **ADMIN},
    )
    async def revoke_key(key_id: str, _admin: AdminDep) -> KeySummary:
        if len(key_id) > 64 or not await run_in_threadpool(s.keys.revoke, key_id):
            raise NotFound(f"No live key {key_id}")
        info = next(k for k in await run_in_threadpool(s.keys.list) if k.key_id == key_id)
        return summary_of(info)

    # --- the playground ------------------------------------------------------------------

    playground = PLAYGROUND.read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def playground_page() -> HTMLResponse:
        return HTMLResponse(playground, headers={"cache-control": "no-cache"})

    # --- operations ----------------------------------------------------------------------

    @app.get("/health", tags=["operations"], summary="Alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        tags=["operations"],
        summary="A worker has its model loaded",
        responses={
            200: {"model": ReadyResponse, "description": "A worker is ready"},
            503: {"model": ReadyResponse, "description": "No worker is ready yet"},
        },
    )
    async def ready() -> JSONResponse:
        count = await run_in_threadpool(s.registry.ready_count, 3 * s.settings.lease_s)
        return JSONResponse(
            {"status": "ready" if count else "starting", "workers_ready": count},
            status_code=200 if count else 503,
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        body = await run_in_threadpool(render_metrics, s)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # --- errors --------------------------------------------------------------------------

    @app.exception_handler(Unauthorized)
    async def on_unauthorized(_r: Request, exc: Unauthorized) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=401)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and request.method in ("POST", "PUT"):
            # a body that is not JSON (or not UTF-8): bad input like any other, so 422
            message = "the body is not valid JSON"
            detail = [{"loc": ["body"], "msg": message, "type": "json_invalid"}]
            return JSONResponse({"detail": detail}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(Forbidden)
    async def on_forbidden(_r: Request, exc: Forbidden) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=403)

    @app.exception_handler(QueueFull)
    @app.exception_handler(RateLimited)
    async def on_too_many(_r: Request, exc: QueueFull | RateLimited) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.message},
            status_code=429,
            headers={"retry-after": str(exc.retry_after_s)},
        )

    @app.exception_handler(NotFound)
    async def on_not_found(_r: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(TooLarge)
    async def on_too_large(_r: Request, exc: TooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(InvalidInput)
    async def on_invalid(_r: Request, exc: InvalidInput) -> JSONResponse:
        header = exc.field.startswith("x-") or exc.field == "idempotency-key"
        where = "header" if header else "body"
        where = "query" if exc.field == "fal_webhook" else where
        loc = [where, *exc.field.split(".")]
        detail = [{"loc": loc, "msg": exc.reason, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(DBAPIError)
    async def on_database_error(_r: Request, exc: DBAPIError) -> JSONResponse:
        if not is_unavailable(exc):
            log.error("database error", exc_info=exc)
            return JSONResponse({"detail": "Internal error"}, status_code=500)
        return JSONResponse(
            {"detail": "The job store is unavailable; retry shortly"},
            status_code=503,
            headers={"retry-after": "2"},
        )

    with contextlib.suppress(Exception):
        app.openapi()  # build the schema once at start, not on the first request
    return app


class NotFound(Exception):
    """A request id, file or upload that does not exist for this caller."""


class TooLarge(Exception):
    """A body over its size limit."""
