"""The webhook outbox: completed jobs with a ``fal_webhook`` wait here until delivered.

A job enters the outbox in the transaction that completes it, so every final state gets exactly
one webhook (no more: a delivery claims its row with a short lease before sending).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from fastsvd.store.db import Database
from fastsvd.store.jobs import Job
from fastsvd.store.tables import api_keys, jobs


@dataclass(frozen=True)
class PendingWebhook:
    """A webhook to send now."""

    job: Job
    attempts: int  # deliveries tried before this one
    secret: str  # the key's signing secret


class WebhookOutbox:
    """Claims due webhooks and records how their delivery went."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def claim_due(self, lease_s: float, limit: int = 10) -> list[PendingWebhook]:
        """Up to ``limit`` due webhooks, each held for ``lease_s`` against other deliverers."""
        now = time.time()
        with self.db.write() as conn:
            rows = conn.execute(
                select(jobs, api_keys.c.webhook_secret)
                .join(api_keys, api_keys.c.key_id == jobs.c.key_id, isouter=True)
                .where(jobs.c.webhook_state == "pending", jobs.c.webhook_next_at <= now)
                .order_by(jobs.c.webhook_next_at)
                .limit(limit)
                .with_for_update(skip_locked=True, of=jobs)
            ).all()
            for row in rows:
                conn.execute(
                    update(jobs).where(jobs.c.id == row.id).values(webhook_next_at=now + lease_s)
                )
        return [
            PendingWebhook(Job.from_row(row), row.webhook_attempts, row.webhook_secret or "")
            for row in rows
        ]

    def delivered(self, job_id: str) -> None:
        """The receiver answered 2xx."""
        self._record(job_id, state="delivered", error=None, next_at=None)

    def retry(self, job_id: str, error: str, next_at: float | None) -> None:
        """This try failed: try again at ``next_at``, or give up when it is None."""
        state = "pending" if next_at is not None else "failed"
        self._record(job_id, state=state, error=error, next_at=next_at)

    def _record(self, job_id: str, **values: Any) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    webhook_state=values["state"],
                    webhook_error=values["error"],
                    webhook_next_at=values["next_at"],
                    webhook_attempts=jobs.c.webhook_attempts + 1,
                )
            )
