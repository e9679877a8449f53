"""The answers each kind of route documents in /openapi.json: every one a client can get, so
that clients (and the schema fuzzer in tests/security) can rely on the schema."""

from __future__ import annotations

from typing import Any

from fastsvd.errors import Cancelled, GenerationFailed, RequestTimeout, http_status
from fastsvd.schema import (
    CancelResponse,
    ErrorResponse,
    QueueStatus,
    SubmitResponse,
    VideoOutput,
)

Responses = dict[int | str, dict[str, Any]]

RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}
# Answers any route with a key can give.
KEYED: Responses = {
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    422: {"model": ErrorResponse, "description": "Invalid input: fal's detail list"},
    429: {
        "model": ErrorResponse,
        "description": "Too many requests, or a queue cap reached: retry after Retry-After",
        "headers": RETRY_AFTER,
    },
    503: {
        "model": ErrorResponse,
        "description": "The job store is unavailable: retry after Retry-After",
        "headers": RETRY_AFTER,
    },
}
ERRORS: Responses = {
    404: {"model": ErrorResponse, "description": "No such request for this key"},
    **KEYED,
}
TOO_LARGE: Responses = {
    413: {"model": ErrorResponse, "description": "The body is over its size limit"},
}
SUBMITTED: Responses = {
    200: {"model": SubmitResponse, "description": "Queued"},
    **TOO_LARGE,
    **KEYED,
}
ADMIN: Responses = {
    403: {"model": ErrorResponse, "description": "The key lacks the admin scope"},
    **KEYED,
}
STATUS: Responses = {
    200: {"model": QueueStatus, "description": "COMPLETED"},
    202: {"model": QueueStatus, "description": "IN_QUEUE or IN_PROGRESS"},
    **ERRORS,
}


def result(output: type[Any] = VideoOutput) -> Responses:
    """A result's answers, for an endpoint whose output model is ``output``."""
    return {
        200: {"model": output, "description": "The output"},
        400: {"model": ErrorResponse, "description": "Not finished yet"},
        http_status(Cancelled): {"model": ErrorResponse, "description": "Cancelled"},
        http_status(GenerationFailed): {
            "model": ErrorResponse,
            "description": "The model failed, or its worker was lost (error_type says why)",
        },
        http_status(RequestTimeout): {
            "model": ErrorResponse,
            "description": "Did not start before its start deadline",
        },
        **ERRORS,
    }


CANCEL: Responses = {
    202: {"model": CancelResponse, "description": "CANCELLATION_REQUESTED"},
    400: {"model": CancelResponse, "description": "ALREADY_COMPLETED"},
    404: {"model": CancelResponse, "description": "NOT_FOUND"},
    **KEYED,
}
