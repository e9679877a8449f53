"""fal's protocol bodies for a stored job, each built from its wire model (``fastsvd.schema``):
the submit answer, the status, a line of the history and the result."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel

from fastsvd.endpoints import app_of
from fastsvd.schema import (
    ErrorResponse,
    QueueStatus,
    RequestLog,
    RequestSummary,
    SubmitResponse,
    absolute_output,
)
from fastsvd.store.jobs import Job, JobState, LogLine

STATUS_NAMES = {
    JobState.queued: "IN_QUEUE",
    JobState.running: "IN_PROGRESS",
    JobState.completed: "COMPLETED",
}


def urls(base_url: str, job: Job) -> dict[str, str]:
    """The request id and the three URLs fal's clients use verbatim after a submit, under the
    job's app (``RequestURLs``' fields)."""
    root = f"{base_url}/{app_of(job.endpoint)}/requests/{job.id}"
    return {
        "request_id": job.id,
        "response_url": root,
        "status_url": f"{root}/status",
        "cancel_url": f"{root}/cancel",
    }


def submitted(job: Job, base_url: str, queue_position: int) -> SubmitResponse:
    """The answer to a submit."""
    return SubmitResponse.model_validate(
        {
            **urls(base_url, job),
            "status": "IN_QUEUE",
            "gateway_request_id": job.id,
            "queue_position": queue_position,
        }
    )


def log_entry(line: LogLine) -> RequestLog:
    """One fal log entry (the store's ``WARNING``, Python's word, is fal's ``WARN``)."""
    at = dt.datetime.fromtimestamp(line.at, tz=dt.UTC).isoformat(timespec="milliseconds")
    return RequestLog.model_validate(
        {
            "message": line.message,
            "level": "WARN" if line.level == "WARNING" else line.level,
            "source": "USER",
            "timestamp": at.replace("+00:00", "Z"),
        }
    )


def no_worker_line(endpoint: str) -> str:
    """Why a queued request of ``endpoint`` is not starting: no ready worker serves it."""
    return (
        f"waiting: no ready worker serves {endpoint}; the request starts when one does "
        "(a worker serves the endpoints FASTSVD_ENDPOINTS names, default all)"
    )


def status_of(
    job: Job,
    base_url: str,
    *,
    queue_position: int | None,
    logs: list[LogLine] | None,
    waiting: str | None = None,
) -> QueueStatus:
    """The status fal's clients parse (``IN_QUEUE`` / ``IN_PROGRESS`` / ``COMPLETED``), with
    only the fields its state carries set: it is sent dumped with ``exclude_unset``. fal's
    Python client needs ``queue_position`` while queued and ``logs`` (null without ?logs)
    after; ``error`` and ``error_type`` come with a failure only. A queued request's ``logs``
    (when asked for) carry ``waiting``, why it is not starting."""
    fields: dict[str, Any] = {**urls(base_url, job), "status": STATUS_NAMES[job.state]}
    entries = [log_entry(line) for line in logs] if logs is not None else None
    if job.state == JobState.queued:
        fields["queue_position"] = queue_position or 0
        if entries is not None:
            if waiting is not None:
                entries.append(log_entry(LogLine(0, job.created_at, "WARN", waiting)))
            fields["logs"] = entries
        return QueueStatus.model_validate(fields)
    fields["logs"] = entries
    if job.state == JobState.completed:
        time_s = job.inference_time_s
        fields["metrics"] = {"inference_time": time_s} if time_s is not None else {}
        if job.error is not None:
            fields["error"] = job.error
            fields["error_type"] = job.error_type
    return QueueStatus.model_validate(fields)


def summary(job: Job, base_url: str) -> RequestSummary:
    """``job`` as a line of its key's history."""
    output = absolute_output(job.output, base_url) if job.output is not None else None
    return RequestSummary.model_validate(
        {
            "request_id": job.id,
            "endpoint": job.endpoint,
            "status": STATUS_NAMES[job.state],
            "created_at": job.created_at,
            "input": job.input,
            "output": output,
            "error": job.error,
            "error_type": job.error_type,
        }
    )


def output_of(job: Job, base_url: str, model: type[BaseModel]) -> BaseModel:
    """A succeeded job's output as ``model`` (its endpoint's), its file URL absolute."""
    return model.model_validate(absolute_output(job.output or {}, base_url))


def error_of(job: Job) -> ErrorResponse:
    """A failed job's result body: its error message and ``error_type``."""
    return ErrorResponse(detail=job.error or "", error_type=job.error_type)
