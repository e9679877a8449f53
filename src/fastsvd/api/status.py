"""fal's status and submit bodies, built from a stored job."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastsvd.endpoints import app_path_of
from fastsvd.schema import RequestSummary, absolute_output
from fastsvd.store.jobs import Job, JobState, LogLine

STATUS_NAMES = {
    JobState.queued: "IN_QUEUE",
    JobState.running: "IN_PROGRESS",
    JobState.completed: "COMPLETED",
}


def urls(base_url: str, job: Job) -> dict[str, str]:
    """The three URLs fal's clients use verbatim after a submit, under the job's app."""
    root = f"{base_url}{app_path_of(job.endpoint)}/requests/{job.id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


def log_entry(line: LogLine) -> dict[str, str]:
    """One fal log entry."""
    at = dt.datetime.fromtimestamp(line.at, tz=dt.UTC).isoformat(timespec="milliseconds")
    return {
        "message": line.message,
        "level": line.level,
        "source": "USER",
        "timestamp": at.replace("+00:00", "Z"),
    }


def no_worker_line(endpoint: str) -> str:
    """Why a queued request of ``endpoint`` is not starting: no ready worker serves it."""
    return (
        f"waiting: no ready worker serves {endpoint}; the request starts when one does "
        "(a worker serves the endpoints FASTSVD_ENDPOINTS names, default all)"
    )


def status_body(
    job: Job,
    base_url: str,
    *,
    queue_position: int | None,
    logs: list[LogLine] | None,
    waiting: str | None = None,
) -> dict[str, Any]:
    """The status object fal's clients parse (``IN_QUEUE`` / ``IN_PROGRESS`` / ``COMPLETED``).
    A queued request's ``logs`` (when asked for) carry ``waiting``, why it is not starting."""
    body: dict[str, Any] = {
        "request_id": job.id,
        **urls(base_url, job),
        "status": STATUS_NAMES[job.state],
    }
    if job.state == JobState.queued:
        body["queue_position"] = queue_position or 0
        if logs is not None:
            body["logs"] = [log_entry(line) for line in logs]
            if waiting is not None:
                body["logs"].append(log_entry(LogLine(0, job.created_at, "WARN", waiting)))
        return body
    body["logs"] = [log_entry(line) for line in logs] if logs is not None else None
    if job.state == JobState.running:
        return body
    body["metrics"] = (
        {"inference_time": job.inference_time_s} if job.inference_time_s is not None else {}
    )
    if job.error is not None:
        body["error"] = job.error
        body["error_type"] = job.error_type
    return body


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
