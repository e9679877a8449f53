"""A Python client for a fastsvd server (or any server speaking fal's queue protocol).

The call shapes follow ``fal_client``, so switching is a one-line change::

    from fastsvd import client as fal_client          # was: import fal_client

    result = fal_client.subscribe(
        "fal-ai/fast-svd/text-to-video",
        arguments={"prompt": "a red fox running through snow"},
        with_logs=True,
        on_queue_update=print,
    )
    print(result.video.url, result.seed)

Videos longer than 25 frames are fastsvd's extension (fal's schema has no such field): add
``"num_frames": 97`` (up to 241) to the arguments, and ``"color_match": False`` to turn off the
colour matching of the chained segments. Their progress lines name the segment
(``video: segment 2/4, step 7/20``; ``fastsvd.progress.parse_step_line`` reads them).

The module-level functions use a client built from ``FASTSVD_URL`` and ``FASTSVD_KEY``;
``SyncClient`` and ``AsyncClient`` take them as arguments, and an ``httpx`` transport for tests
or custom networking. Both run the same core: each operation is a generator that yields the HTTP
requests (or pauses) it needs and receives the responses, so the protocol logic exists once and
the two clients only differ in how they send and sleep.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from fastsvd import constants as c
from fastsvd.endpoints import app_of
from fastsvd.errors import ClientError
from fastsvd.schema import (
    CancelResponse,
    ErrorResponse,
    QueueStatus,
    SubmitResponse,
    UploadedFile,
    VideoOutput,
    field_errors,
)

__all__ = [
    "AsyncClient",
    "AsyncRequestHandle",
    "ClientError",
    "Completed",
    "InProgress",
    "Queued",
    "RequestHandle",
    "Status",
    "SyncClient",
    "cancel",
    "result",
    "run",
    "status",
    "submit",
    "subscribe",
    "upload",
    "upload_file",
]

DEFAULT_URL = "http://127.0.0.1:8000"
RETRIES = 5  # 429 / 503 answers retried (after Retry-After) before giving up

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


# --- what comes back ---------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    """Waiting; ``position`` requests start before it (0: it is next). ``logs`` (with
    ``with_logs``) says why, when no ready worker serves its endpoint."""

    position: int
    logs: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class InProgress:
    """Running; ``logs`` (with ``with_logs``) holds every line so far."""

    logs: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Completed:
    """Finished: succeeded, failed or cancelled (``error`` and ``error_type`` say which)."""

    logs: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None


Status = Queued | InProgress | Completed


# --- the core: protocol logic as generators of steps ---------------------------------------

Step = httpx.Request | float  # a request to send, or seconds to wait
Flow = Generator[Step, httpx.Response | None, T]


def _error(response: httpx.Response) -> ClientError:
    """The ``ClientError`` of a refusal: its body read as ``ErrorResponse`` when it is one (a
    proxy in between may answer anything)."""
    try:
        body: ErrorResponse | None = ErrorResponse.model_validate_json(response.content)
    except ValidationError:
        body = None
    detail = body.detail if body is not None else None
    error_type = (body.error_type if body is not None else None) or response.headers.get(
        "x-fal-error-type"
    )
    fields: list[tuple[str, str]] = []
    if isinstance(detail, list):
        for item in detail:
            loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query", "header")]
            fields.append((".".join(loc) or "input", str(item.get("msg", "invalid"))))
        message = "; ".join(f"{name}: {msg}" for name, msg in fields) or "invalid input"
    elif detail:
        message = str(detail)
    else:
        message = response.reason_phrase or "request failed"
    retry = response.headers.get("retry-after")
    return ClientError(
        f"{response.status_code} {message}",
        status_code=response.status_code,
        detail=detail,
        error_type=error_type,
        fields=fields,
        retry_after_s=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
    )


def _send(request: httpx.Request, ok: tuple[int, ...] = (200,)) -> Flow[httpx.Response]:
    """Send ``request``, waiting out 429 and 503 answers; raise ``ClientError`` otherwise."""
    for attempt in range(RETRIES + 1):
        response = yield request
        assert response is not None
        if response.status_code in ok:
            return response
        error = _error(response)
        if response.status_code not in (429, 503) or attempt == RETRIES:
            raise error
        yield min(error.retry_after_s or 1.0, 30.0)
    raise AssertionError("unreachable")


def _read(response: httpx.Response, model: type[M]) -> M:
    """The body of ``response`` as ``model``, the wire model the server builds it from."""
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        field, message = field_errors(exc)[0]
        raise ClientError(
            f"{response.status_code} not a {model.__name__}: {field}: {message}",
            status_code=response.status_code,
            detail=response.text,
        ) from None


def _status_of(body: QueueStatus) -> Status:
    logs = [line.model_dump() for line in body.logs] if body.logs is not None else None
    if body.status == "IN_QUEUE":
        return Queued(position=body.queue_position or 0, logs=logs)
    if body.status == "IN_PROGRESS":
        return InProgress(logs=logs)
    return Completed(
        logs=logs, metrics=body.metrics or {}, error=body.error, error_type=body.error_type
    )


class _Core:
    """Builds requests and reads responses; knows nothing of sockets or event loops."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"authorization": f"Key {key}"} if key else {}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Request:
        """An ``httpx`` request to ``path`` (a path under the server, or a whole URL), with the
        key."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        target = (
            path if path.startswith(("http://", "https://")) else f"{self.url}/{path.lstrip('/')}"
        )
        return httpx.Request(method, target, headers=headers, **kwargs)

    def submit(
        self,
        application: str,
        arguments: dict[str, Any],
        *,
        webhook_url: str | None = None,
        priority: str | None = None,
        start_timeout_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> Flow[str]:
        """Queue ``arguments`` for ``application``; returns the request id."""
        headers: dict[str, str] = {}
        if priority is not None:
            headers["x-fal-queue-priority"] = priority
        if start_timeout_s is not None:
            headers["x-fal-request-timeout"] = str(start_timeout_s)
        if idempotency_key is not None:
            headers["idempotency-key"] = idempotency_key
        params = {"fal_webhook": webhook_url} if webhook_url else None
        response = yield from _send(
            self.request("POST", application, json=arguments, headers=headers, params=params)
        )
        return _read(response, SubmitResponse).request_id

    def status(self, application: str, request_id: str, *, with_logs: bool) -> Flow[Status]:
        """The request's status (``logs`` with ``with_logs``)."""
        path = f"{app_of(application)}/requests/{request_id}/status"
        params = {"logs": "1"} if with_logs else None
        response = yield from _send(self.request("GET", path, params=params), ok=(200, 202))
        return _status_of(_read(response, QueueStatus))

    def result(self, application: str, request_id: str) -> Flow[VideoOutput]:
        """The request's output; a ``ClientError`` when it failed or is not finished."""
        path = f"{app_of(application)}/requests/{request_id}"
        response = yield from _send(self.request("GET", path))
        return _read(response, VideoOutput)

    def cancel(self, application: str, request_id: str) -> Flow[str]:
        """Ask to cancel; returns the server's answer (``CANCELLATION_REQUESTED`` ...)."""
        path = f"{app_of(application)}/requests/{request_id}/cancel"
        response = yield from _send(self.request("PUT", path), ok=(202, 400))
        return _read(response, CancelResponse).status

    def wait(
        self,
        application: str,
        request_id: str,
        *,
        with_logs: bool,
        on_update: Callable[[Status], None] | None,
        timeout_s: float | None,
    ) -> Flow[Completed]:
        """Poll until COMPLETED, reporting each new status."""
        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        delay, last = c.CLIENT_POLL_FIRST_S, None
        while True:
            current = yield from self.status(application, request_id, with_logs=with_logs)
            if current != last and on_update is not None:
                on_update(current)
            if isinstance(current, Completed):
                return current
            delay = (
                min(delay * 1.5, c.CLIENT_POLL_MAX_S) if current == last else c.CLIENT_POLL_FIRST_S
            )
            last = current
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError(f"request {request_id} not finished in {timeout_s} s")
            yield delay

    def subscribe(
        self,
        application: str,
        arguments: dict[str, Any],
        *,
        with_logs: bool,
        on_enqueue: Callable[[str], None] | None,
        on_queue_update: Callable[[Status], None] | None,
        timeout_s: float | None,
        **submit_options: Any,
    ) -> Flow[VideoOutput]:
        """Submit, wait for the end, return the output."""
        request_id = yield from self.submit(application, arguments, **submit_options)
        if on_enqueue is not None:
            on_enqueue(request_id)
        yield from self.wait(
            application,
            request_id,
            with_logs=with_logs,
            on_update=on_queue_update,
            timeout_s=timeout_s,
        )
        return (yield from self.result(application, request_id))

    def run(self, application: str, arguments: dict[str, Any]) -> Flow[VideoOutput]:
        """Run on the synchronous route: one call that answers the output."""
        response = yield from _send(self.request("POST", f"run/{application}", json=arguments))
        return _read(response, VideoOutput)

    def upload(self, data: bytes, content_type: str, file_name: str | None) -> Flow[str]:
        """Store ``data`` on the server; returns its URL."""
        headers = {"content-type": content_type}
        if file_name:
            headers["x-fal-file-name"] = file_name
        response = yield from _send(
            self.request("POST", "files/upload", content=data, headers=headers)
        )
        return _read(response, UploadedFile).access_url

    def download(self, url: str) -> Flow[bytes]:
        """The bytes at ``url`` (a file the server serves)."""
        response = yield from _send(self.request("GET", url))
        return response.content


def _file_parts(path: str | os.PathLike[str]) -> tuple[bytes, str, str]:
    file = Path(path)
    content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return file.read_bytes(), content_type, file.name


# --- the two clients ---------------------------------------------------------------------


def _from_env(url: str | None, key: str | None) -> tuple[str, str | None]:
    return (
        url or os.environ.get("FASTSVD_URL") or DEFAULT_URL,
        key if key is not None else os.environ.get("FASTSVD_KEY") or None,
    )


class SyncClient:
    """A blocking client. ``url`` and ``key`` default to ``FASTSVD_URL`` and ``FASTSVD_KEY``."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout_s: float = c.CLIENT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url, key = _from_env(url, key)
        self._core = _Core(url, key)
        self._http = httpx.Client(timeout=timeout_s, transport=transport)

    def _drive(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, float):
                    time.sleep(step)
                    step = flow.send(None)
                else:
                    step = flow.send(self._http.send(step))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    @property
    def url(self) -> str:
        """The server's root URL."""
        return self._core.url

    def wait(
        self,
        application: str,
        request_id: str,
        *,
        with_logs: bool = False,
        on_queue_update: Callable[[Status], None] | None = None,
        timeout_s: float | None = None,
    ) -> Completed:
        """Follow a submitted request to its end, calling ``on_queue_update`` on each change."""
        return self._drive(
            self._core.wait(
                application,
                request_id,
                with_logs=with_logs,
                on_update=on_queue_update,
                timeout_s=timeout_s,
            )
        )

    def submit(self, application: str, arguments: dict[str, Any], **options: Any) -> RequestHandle:
        """Queue a request; ``webhook_url``, ``priority`` ("normal"/"low"),
        ``start_timeout_s`` and ``idempotency_key`` are optional."""
        request_id = self._drive(self._core.submit(application, arguments, **options))
        return RequestHandle(self, application, request_id)

    def subscribe(
        self,
        application: str,
        arguments: dict[str, Any],
        *,
        with_logs: bool = False,
        on_enqueue: Callable[[str], None] | None = None,
        on_queue_update: Callable[[Status], None] | None = None,
        timeout_s: float | None = None,
        **options: Any,
    ) -> VideoOutput:
        """Submit, follow the status (``on_queue_update`` on each change), return the result."""
        return self._drive(
            self._core.subscribe(
                application,
                arguments,
                with_logs=with_logs,
                on_enqueue=on_enqueue,
                on_queue_update=on_queue_update,
                timeout_s=timeout_s,
                **options,
            )
        )

    def run(self, application: str, arguments: dict[str, Any]) -> VideoOutput:
        """The synchronous endpoint: one call that returns when the video is ready."""
        return self._drive(self._core.run(application, arguments))

    def status(self, application: str, request_id: str, *, with_logs: bool = False) -> Status:
        """Where the request stands: ``Queued``, ``InProgress`` or ``Completed``; with
        ``with_logs``, its log lines so far."""
        return self._drive(self._core.status(application, request_id, with_logs=with_logs))

    def result(self, application: str, request_id: str) -> VideoOutput:
        """The output; ``ClientError`` if the request failed, was cancelled or is not done."""
        return self._drive(self._core.result(application, request_id))

    def cancel(self, application: str, request_id: str) -> str:
        """Ask to cancel: ``CANCELLATION_REQUESTED`` or ``ALREADY_COMPLETED``."""
        return self._drive(self._core.cancel(application, request_id))

    def upload(self, data: bytes, content_type: str, file_name: str | None = None) -> str:
        """Store ``data`` on the server; the URL it answers can be an ``image_url``."""
        return self._drive(self._core.upload(data, content_type, file_name))

    def upload_file(self, path: str | os.PathLike[str]) -> str:
        """Upload the file at ``path`` (its type guessed from its name); returns its URL."""
        return self.upload(*_file_parts(path))

    def download(self, url: str) -> bytes:
        """The bytes of an output file (``result.video.url``)."""
        return self._drive(self._core.download(url))

    def close(self) -> None:
        """Close the connections (``with SyncClient() as client`` does it)."""
        self._http.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class AsyncClient:
    """The same client for ``asyncio``: every method is a coroutine."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout_s: float = c.CLIENT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url, key = _from_env(url, key)
        self._core = _Core(url, key)
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport)

    async def _drive(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                    step = flow.send(None)
                else:
                    step = flow.send(await self._http.send(step))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    @property
    def url(self) -> str:
        """The server's root URL."""
        return self._core.url

    async def wait(
        self,
        application: str,
        request_id: str,
        *,
        with_logs: bool = False,
        on_queue_update: Callable[[Status], None] | None = None,
        timeout_s: float | None = None,
    ) -> Completed:
        """Follow a submitted request to its end, calling ``on_queue_update`` on each change."""
        return await self._drive(
            self._core.wait(
                application,
                request_id,
                with_logs=with_logs,
                on_update=on_queue_update,
                timeout_s=timeout_s,
            )
        )

    async def submit(
        self, application: str, arguments: dict[str, Any], **options: Any
    ) -> AsyncRequestHandle:
        """Queue a request; returns its handle. Options as ``SyncClient.submit``."""
        request_id = await self._drive(self._core.submit(application, arguments, **options))
        return AsyncRequestHandle(self, application, request_id)

    async def subscribe(
        self,
        application: str,
        arguments: dict[str, Any],
        *,
        with_logs: bool = False,
        on_enqueue: Callable[[str], None] | None = None,
        on_queue_update: Callable[[Status], None] | None = None,
        timeout_s: float | None = None,
        **options: Any,
    ) -> VideoOutput:
        """Submit, follow the status (``on_queue_update`` on each change), return the output."""
        return await self._drive(
            self._core.subscribe(
                application,
                arguments,
                with_logs=with_logs,
                on_enqueue=on_enqueue,
                on_queue_update=on_queue_update,
                timeout_s=timeout_s,
                **options,
            )
        )

    async def run(self, application: str, arguments: dict[str, Any]) -> VideoOutput:
        """The synchronous endpoint: one call that returns when the video is ready."""
        return await self._drive(self._core.run(application, arguments))

    async def status(self, application: str, request_id: str, *, with_logs: bool = False) -> Status:
        """Where the request stands: ``Queued``, ``InProgress`` or ``Completed``."""
        return await self._drive(self._core.status(application, request_id, with_logs=with_logs))

    async def result(self, application: str, request_id: str) -> VideoOutput:
        """The output; ``ClientError`` if the request failed, was cancelled or is not done."""
        return await self._drive(self._core.result(application, request_id))

    async def cancel(self, application: str, request_id: str) -> str:
        """Ask to cancel: ``CANCELLATION_REQUESTED`` or ``ALREADY_COMPLETED``."""
        return await self._drive(self._core.cancel(application, request_id))

    async def upload(self, data: bytes, content_type: str, file_name: str | None = None) -> str:
        """Store ``data`` on the server; the URL it answers can be an ``image_url``."""
        return await self._drive(self._core.upload(data, content_type, file_name))

    async def upload_file(self, path: str | os.PathLike[str]) -> str:
        """Upload the file at ``path`` (its type guessed from its name); returns its URL."""
        return await self.upload(*_file_parts(path))

    async def download(self, url: str) -> bytes:
        """The bytes of an output file (``result.video.url``)."""
        return await self._drive(self._core.download(url))

    async def aclose(self) -> None:
        """Close the connections (``async with AsyncClient() as client`` does it)."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


@dataclass(frozen=True)
class RequestHandle:
    """A submitted request (``fal_client.SyncRequestHandle``)."""

    client: SyncClient
    application: str
    request_id: str

    def status(self, *, with_logs: bool = False) -> Status:
        """Where this request stands (``with_logs``: with its log lines)."""
        return self.client.status(self.application, self.request_id, with_logs=with_logs)

    def iter_events(self, *, with_logs: bool = False) -> Iterator[Status]:
        """Each new status until (and including) ``Completed``."""
        seen: list[Status] = []
        flow = self.client._core.wait(
            self.application,
            self.request_id,
            with_logs=with_logs,
            on_update=seen.append,
            timeout_s=None,
        )
        try:
            step = next(flow)
            while True:
                yield from seen
                seen.clear()
                if isinstance(step, float):
                    time.sleep(step)
                    step = flow.send(None)
                else:
                    step = flow.send(self.client._http.send(step))
        except StopIteration:
            yield from seen

    def get(self) -> VideoOutput:
        """Wait for the end, then the output (``ClientError`` if it failed)."""
        self.client.wait(self.application, self.request_id)
        return self.client.result(self.application, self.request_id)

    def cancel(self) -> str:
        """Ask to cancel this request: ``CANCELLATION_REQUESTED`` or ``ALREADY_COMPLETED``."""
        return self.client.cancel(self.application, self.request_id)


@dataclass(frozen=True)
class AsyncRequestHandle:
    """A submitted request, for ``AsyncClient``."""

    client: AsyncClient
    application: str
    request_id: str

    async def status(self, *, with_logs: bool = False) -> Status:
        """Where this request stands (``with_logs``: with its log lines)."""
        return await self.client.status(self.application, self.request_id, with_logs=with_logs)

    async def iter_events(self, *, with_logs: bool = False) -> AsyncIterator[Status]:
        """Each new status until (and including) ``Completed``."""
        seen: list[Status] = []
        flow = self.client._core.wait(
            self.application,
            self.request_id,
            with_logs=with_logs,
            on_update=seen.append,
            timeout_s=None,
        )
        try:
            step = next(flow)
            while True:
                for event in seen:
                    yield event
                seen.clear()
                if isinstance(step, float):
                    await asyncio.sleep(step)
                    step = flow.send(None)
                else:
                    step = flow.send(await self.client._http.send(step))
        except StopIteration:
            for event in seen:
                yield event

    async def get(self) -> VideoOutput:
        """Wait for the end, then the output (``ClientError`` if it failed)."""
        await self.client.wait(self.application, self.request_id)
        return await self.client.result(self.application, self.request_id)

    async def cancel(self) -> str:
        """Ask to cancel this request: ``CANCELLATION_REQUESTED`` or ``ALREADY_COMPLETED``."""
        return await self.client.cancel(self.application, self.request_id)


# --- module-level functions, as in fal_client ----------------------------------------------

_default: SyncClient | None = None


def _client() -> SyncClient:
    global _default
    if _default is None:
        _default = SyncClient()
    return _default


def submit(application: str, arguments: dict[str, Any], **options: Any) -> RequestHandle:
    """Queue a request on the server in ``FASTSVD_URL`` with ``FASTSVD_KEY``."""
    return _client().submit(application, arguments, **options)


def subscribe(application: str, arguments: dict[str, Any], **options: Any) -> VideoOutput:
    """Submit and wait for the output, reporting progress to ``on_queue_update``."""
    return _client().subscribe(application, arguments, **options)


def run(application: str, arguments: dict[str, Any]) -> VideoOutput:
    """The synchronous endpoint."""
    return _client().run(application, arguments)


def status(application: str, request_id: str, *, with_logs: bool = False) -> Status:
    """Where a request stands, on the server in ``FASTSVD_URL`` with ``FASTSVD_KEY``."""
    return _client().status(application, request_id, with_logs=with_logs)


def result(application: str, request_id: str) -> VideoOutput:
    """A finished request's output (``ClientError`` if it failed or is not done)."""
    return _client().result(application, request_id)


def cancel(application: str, request_id: str) -> str:
    """Ask to cancel a request: ``CANCELLATION_REQUESTED`` or ``ALREADY_COMPLETED``."""
    return _client().cancel(application, request_id)


def upload(data: bytes, content_type: str, file_name: str | None = None) -> str:
    """Store ``data`` on the server; returns a URL usable as ``image_url``."""
    return _client().upload(data, content_type, file_name)


def upload_file(path: str | os.PathLike[str]) -> str:
    """Upload the file at ``path``; returns a URL usable as ``image_url``."""
    return _client().upload_file(path)
