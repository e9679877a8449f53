"""What one caller may cost the API process: body size and request rate.

The caps that need every process to agree (queue depth, a key's unfinished requests, a key's
submits a minute) live in the job store, counted in the same transaction as the insert. What is
here is per process and in memory, on purpose: it runs before any database work, so a flood is
turned away without touching the store.
"""

from __future__ import annotations

import json
import threading
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A JSON body: a 20 MB data: URI is about 27 MB of base64, plus the other fields.
JSON_BODY_MAX_BYTES = 28 * 1024 * 1024
BUCKETS_MAX = 100_000  # callers remembered per process before idle ones are forgotten


class TokenBuckets:
    """One token bucket per caller: ``rate_per_s`` sustained, bursts of ``burst``."""

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, caller: str) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is."""
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(caller, now)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                return (1.0 - tokens) / self.rate_per_s
            if len(self._buckets) >= BUCKETS_MAX and caller not in self._buckets:
                self._forget_idle(now)
            self._buckets[caller] = (tokens - 1.0, now)
            return 0.0

    def peek(self, caller: str) -> float:
        """The seconds until ``caller`` has a token (0.0: now), taking nothing."""
        with self._lock:
            tokens = self._tokens(caller, time.monotonic())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s

    def _tokens(self, caller: str, now: float) -> float:
        """``caller``'s tokens now: what was left, refilled since, at most ``burst``."""
        tokens, at = self._buckets.get(caller, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate_per_s)

    def _forget_idle(self, now: float) -> None:
        full_after_s = self.burst / self.rate_per_s
        idle = [k for k, (_, at) in self._buckets.items() if now - at > full_after_s]
        for caller in idle:  # a refilled bucket is the same as none
            del self._buckets[caller]
        if len(self._buckets) >= BUCKETS_MAX:  # all busy: start over rather than grow
            self._buckets.clear()


class BodyLimit:
    """ASGI middleware: bodies over ``max_bytes`` get 413 before the application reads them.

    Paths under ``own_limit`` (uploads) are passed through: they stream and cap their bodies
    themselves, with a larger limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, own_limit: tuple[str, ...]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.own_limit = own_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.own_limit):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        body, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)  # a disconnect: pass it on
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            body.append(chunk)
            more = message.get("more_body", False)
        whole: Message = {"type": "http.request", "body": b"".join(body), "more_body": False}
        await self.app(scope, _replay([whole], then=receive), send)

    async def _refuse(self, send: Send) -> None:
        detail = f"request bodies are limited to {self.max_bytes:,} bytes"
        payload = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A ``receive`` that hands out ``messages``, then defers to ``then`` (disconnects)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
