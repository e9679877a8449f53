"""The tables, written once for every database fastsvd runs on.

Times are UNIX seconds (float) so that leases and deadlines compare without time-zone care;
JSON columns hold wire objects as text, never pickles.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    # SHA-256 of the secret, hex: secrets are 256 random bits, so a slow hash adds nothing
    Column("secret_hash", String(64), nullable=False),
    Column("name", String(200), nullable=False, default=""),
    Column("scope", String(16), nullable=False, default="user"),  # user | admin
    Column("webhook_secret", String(100), nullable=False),  # "whsec_..." (Standard Webhooks)
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

jobs = Table(
    "jobs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # FIFO order
    Column("id", String(36), nullable=False, unique=True),  # the request id clients see
    Column("key_id", String(64), nullable=False, index=True),
    Column("endpoint", String(100), nullable=False),
    Column("input", Text, nullable=False),  # the validated fal input, JSON
    Column("state", String(16), nullable=False),  # see jobs.JobState
    Column("priority", Integer, nullable=False, default=0),  # 0 normal, 1 low
    Column("created_at", Float, nullable=False),
    Column("start_deadline_at", Float),  # X-Fal-Request-Timeout: must start by then
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(100)),
    Column("lease_expires_at", Float),
    Column("lease_token", Integer, nullable=False, default=0),  # fencing: +1 per claim
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("output", Text),  # the fal output, JSON
    Column("error", Text),
    Column("error_type", String(64)),
    Column("http_status", Integer),  # what the result endpoint answers on failure
    Column("inference_time_s", Float),
    Column("webhook_url", Text),
    Column("idempotency_key", String(200)),
    Column("base_url", Text),  # how the submitter reached the API: the root of output URLs
    # the webhook outbox: set pending in the same transaction that makes the job completed
    Column("webhook_state", String(16)),  # pending | delivered | failed
    Column("webhook_attempts", Integer, nullable=False, default=0),
    Column("webhook_next_at", Float),
    Column("webhook_error", Text),
    # (migration 6) fal's request headers the worker and the reaper read
    Column("output_lifetime_s", Float),  # X-Fal-Object-Lifecycle-Preference; None: retention_s
    Column("no_retry", Boolean),  # x-fal-no-retry: a lost worker ends it; None: False
)
Index("ix_jobs_webhook", jobs.c.webhook_state, jobs.c.webhook_next_at)
Index("ix_jobs_queue", jobs.c.state, jobs.c.priority, jobs.c.seq)
Index("ix_jobs_lease", jobs.c.state, jobs.c.lease_expires_at)
# (migration 2) the start-deadline sweep that runs with every claim reads only jobs with one
Index("ix_jobs_start_deadline", jobs.c.start_deadline_at)
# (migration 3) a key's submits in the last minute (rate limit) and its history, newest first
Index("ix_jobs_key_created", jobs.c.key_id, jobs.c.created_at)
Index("ix_jobs_idempotency", jobs.c.key_id, jobs.c.idempotency_key, unique=True)

# (migration 6) the deployment's Ed25519 keys that sign fal-style webhooks (fastsvd.store.signing)
webhook_signing_keys = Table(
    "webhook_signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("private_key", String(64), nullable=False),  # the 32-byte seed, base64url
    Column("created_at", Float, nullable=False),
    Column("retires_at", Float),  # None: the signing key; else published until then
)

job_logs = Table(
    "job_logs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("at", Float, nullable=False),
    Column("level", String(8), nullable=False),
    Column("message", Text, nullable=False),
)
Index("ix_job_logs_job", job_logs.c.job_id, job_logs.c.id)

files = Table(
    "files",
    metadata,
    Column("id", String(64), primary_key=True),  # unguessable: the URL is the capability
    Column("key_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # upload | output
    Column("file_name", String(255), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("size", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("upload_token", String(64)),  # set while an upload is initiated, not yet sent
)
Index("ix_files_expiry", files.c.expires_at)

# (dropped by migration 7: stage times are each worker's metric, fastsvd.telemetry)
stage_timings = Table(
    "stage_timings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("stage", String(32), nullable=False),
    Column("seconds", Float, nullable=False),
)
Index("ix_stage_timings_stage", stage_timings.c.stage)

workers = Table(
    "workers",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    # (migration 4) who the process is, for telling that it is gone (fastsvd.processes)
    Column("host_id", String(200)),  # boot id and pid namespace; None: unknown
    Column("start_ticks", BigInteger),  # /proc/<pid>/stat starttime; None: unknown
    Column("ready_at", Float),  # models loaded
    # (migration 5) the endpoint ids it serves, JSON; None: a worker from before, serving all
    Column("endpoints", Text),
    Column("seen_at", Float, nullable=False),  # last heartbeat
    # (migration 8) PostgreSQL: the channel its process LISTENs on for wake-ups meant for it,
    # and since when it waits for work (None: busy, or woken already)
    Column("wake_channel", String(63)),
    Column("idle_since", Float),
)
