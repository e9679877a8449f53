"""The edge's one mapping of errors to answers: fal-style bodies (``{"detail": ...}``).

Every error of ``fastsvd.errors`` reaches ``on_error``, which Starlette finds along the class
hierarchy; its status comes from ``fastsvd.errors.HTTP_STATUS``. Field errors are fal's detail
list (FastAPI's own validation errors too, with their echo of the input made encodable), and a
body FastAPI could not read is bad input like any other. Anything else is a bug: logged, and a
plain 500 that reveals nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastsvd.api.body import safe_detail
from fastsvd.errors import (
    FastSVDError,
    InvalidInput,
    RangeNotSatisfiable,
    StoreUnavailable,
    TooManyRequests,
    Unavailable,
    http_status,
)
from fastsvd.schema import ErrorResponse

log = logging.getLogger("fastsvd.api")

STORE_UNAVAILABLE = "The job store is unavailable; retry shortly"
STORAGE_UNAVAILABLE = "The file storage is unavailable; retry shortly"


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(FastSVDError, on_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_bug)


async def on_error(_request: Request, exc: FastSVDError) -> JSONResponse:
    status = http_status(exc)
    headers: dict[str, str] = {}
    detail: str | list[dict[str, Any]] = exc.message
    if isinstance(exc, InvalidInput):
        detail = [{"loc": _loc(exc.field), "msg": exc.reason, "type": "value_error"}]
    elif isinstance(exc, TooManyRequests):
        headers["retry-after"] = str(exc.retry_after_s)
    elif isinstance(exc, Unavailable):
        log.warning("%s", exc.message)
        detail = STORE_UNAVAILABLE if isinstance(exc, StoreUnavailable) else STORAGE_UNAVAILABLE
        headers["retry-after"] = str(exc.retry_after_s)
    elif isinstance(exc, RangeNotSatisfiable) and exc.size is not None:
        headers["content-range"] = f"bytes */{exc.size}"
    elif status >= 500:
        log.error("%s", exc.message, exc_info=exc)
    return _answer(detail, status, headers)


def _answer(
    detail: str | list[dict[str, Any]], status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error answer: fal's ``{"detail": ...}`` body (``ErrorResponse``)."""
    body = ErrorResponse(detail=detail).model_dump(mode="json", exclude_unset=True)
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(field: str) -> list[str]:
    """Where a field sits in the request: a header, the webhook query, or the body."""
    if field.startswith("x-") or field == "idempotency-key":
        return ["header", field]
    if field == "fal_webhook":
        return ["query", field]
    return ["body", *field.split(".")]


async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    # echoes of the input made encodable: an error answer never fails to serialise
    return _answer(safe_detail(exc.errors()), http_status(InvalidInput))


async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 400 and request.method in ("POST", "PUT"):
        # a body that is not JSON (or not UTF-8): bad input like any other, so 422
        message = "the body is not valid JSON"
        return _answer(
            [{"loc": ["body"], "msg": message, "type": "json_invalid"}], http_status(InvalidInput)
        )
    return await http_exception_handler(request, exc)


async def on_bug(_request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error", exc_info=exc)
    return _answer("Internal error", http_status(FastSVDError))
