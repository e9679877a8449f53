"""Webhook delivery: a background process that sends fal's webhook body for finished jobs.

Bodies are signed twice, so that receivers of either kind verify them unchanged:

- fal's way: ``x-fal-webhook-request-id``, ``-user-id`` (the id of the API key that submitted
  the request), ``-timestamp`` (UNIX seconds) and ``-signature``, the hex Ed25519 signature of
  ``request_id \n user_id \n timestamp \n sha256_hex(body)`` with the deployment's signing key,
  whose public half ``/.well-known/jwks.json`` publishes (``fastsvd.store.signing``);
- the Standard Webhooks way (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature: v1,<base64 HMAC-SHA256>`` over ``id.timestamp.body`` with the key's
  ``whsec_`` secret, shown by ``fastsvd keys webhook-secret``).

A delivery never follows redirects, re-checks the target's addresses before every try and
connects to a checked address, and is retried with exponential backoff: ``webhook_attempts``
tries spread over ``webhook_window_s``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time

import httpx

from fastsvd import __version__
from fastsvd import constants as c
from fastsvd.errors import InvalidInput
from fastsvd.net.guard import Resolver, check_url, system_resolver
from fastsvd.retry import until_available
from fastsvd.schema import WebhookBody, absolute_output
from fastsvd.settings import Settings
from fastsvd.store.jobs import Job
from fastsvd.store.signing import SigningKey, SigningKeyStore
from fastsvd.store.webhooks import PendingWebhook, WebhookOutbox

log = logging.getLogger("fastsvd.webhooks")


def body_of(job: Job) -> WebhookBody:
    """fal's webhook body for a completed job, with only the fields of its kind set: an ``OK``
    body has no ``error`` and no ``error_type``."""
    if job.output is not None:
        return WebhookBody(
            request_id=job.id,
            gateway_request_id=job.id,
            status="OK",
            payload=absolute_output(job.output, job.base_url or ""),
        )
    return WebhookBody(
        request_id=job.id,
        gateway_request_id=job.id,
        status="ERROR",
        error=f"Invalid status code: {job.http_status or 500}",
        error_type=job.error_type,
        payload={"detail": job.error},
    )


def dumps(body: WebhookBody) -> bytes:
    """The exact bytes that are signed and sent."""
    return json.dumps(
        body.model_dump(mode="json", exclude_unset=True), separators=(",", ":")
    ).encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for ``body``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def fal_signature(
    key: SigningKey, request_id: str, user_id: str, timestamp: int, body: bytes
) -> str:
    """The ``x-fal-webhook-signature`` header value for ``body``."""
    digest = hashlib.sha256(body).hexdigest()
    return key.sign(f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()).hex()


def retry_delays_s(attempts: int, window_s: float) -> list[float]:
    """Waits between tries: doubling, summing to ``window_s`` (11 tries, 2 h: 7 s ... 1 h)."""
    gaps = attempts - 1
    if gaps <= 0:
        return []
    unit = window_s / (2**gaps - 1)
    return [unit * 2**i for i in range(gaps)]


class Deliverer:
    """Sends due webhooks until stopped."""

    def __init__(
        self,
        outbox: WebhookOutbox,
        settings: Settings,
        signing_keys: SigningKeyStore,
        *,
        resolver: Resolver = system_resolver,
        client: httpx.Client | None = None,
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.signing_keys = signing_keys
        self.resolver = resolver
        self.client = client or httpx.Client(
            follow_redirects=False, timeout=settings.webhook_timeout_s, trust_env=False
        )
        self.delays_s = retry_delays_s(settings.webhook_attempts, settings.webhook_window_s)

    def serve(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set."""

        def one_round() -> int:
            due = self.outbox.claim_due(lease_s=self.settings.webhook_timeout_s * 3)
            for pending in due:
                self.deliver(pending)
            return len(due)

        while not stop.is_set():
            delivered = until_available(one_round, wait=stop.wait, give_up=stop.is_set)
            if not delivered:
                stop.wait(c.WEBHOOK_IDLE_POLL_S)

    def deliver(self, pending: PendingWebhook) -> bool:
        """One try; records the outcome. True when the receiver took it."""
        job = pending.job
        url = job.webhook_url or ""
        body = dumps(body_of(job))
        try:
            target = check_url(
                url,
                "fal_webhook",
                allow_private=self.settings.allow_private_urls,
                resolver=self.resolver,
            )
        except InvalidInput as exc:
            self.outbox.retry(job.id, exc.message, None)  # the target may never be used
            return False
        pinned_url, host, extensions = target.pinned()
        timestamp = int(time.time())
        signing_key = self.signing_keys.current()  # read each time: a rotation applies at once
        headers = {
            **host,
            "content-type": "application/json",
            "user-agent": f"fastsvd/{__version__}",
            "webhook-id": job.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(pending.secret, job.id, timestamp, body),
            "x-fal-webhook-request-id": job.id,
            "x-fal-webhook-user-id": job.key_id,
            "x-fal-webhook-timestamp": str(timestamp),
            "x-fal-webhook-signature": fal_signature(
                signing_key, job.id, job.key_id, timestamp, body
            ),
        }
        try:
            response = self.client.post(
                pinned_url, content=body, headers=headers, extensions=extensions
            )
            error = None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        if error is None:
            self.outbox.delivered(job.id)
            return True
        tried = pending.attempts + 1
        if tried >= self.settings.webhook_attempts:
            self.outbox.retry(job.id, error, None)
            log.warning("webhook for %s failed %d times; giving up: %s", job.id, tried, error)
        else:
            self.outbox.retry(job.id, error, time.time() + self.delays_s[tried - 1])
        return False
