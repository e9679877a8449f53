"""``Authorization: Key <key_id>:<secret>`` (or ``Bearer``), checked against hashed keys, and
the per-caller request rate: per key once it is known, per client address for failed keys.
"""

from __future__ import annotations

import hashlib
import time
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from fastsvd import constants as c
from fastsvd.api.limits import TokenBuckets
from fastsvd.errors import Forbidden, RateLimited, Unauthorized
from fastsvd.store.keys import KeyInfo, Scope

KEY_CACHE_MAX = 10_000

ANONYMOUS = KeyInfo("local", "auth off", Scope.admin, 0.0, None, "whsec_")


class RateLimits:
    """The API process's token buckets: calls per key, and failed keys per client address.

    A failed key costs a token of its address, and an address with none left is answered 429
    before its key is looked up, so guessing keys cannot load the database.
    """

    def __init__(self, requests_per_s: float, failures_per_s: float) -> None:
        self.calls = TokenBuckets(requests_per_s, 2 * requests_per_s) if requests_per_s else None
        self.failures = (
            TokenBuckets(failures_per_s, 10 * failures_per_s) if failures_per_s else None
        )

    def check_address(self, address: str) -> None:
        wait = self.failures.peek(address) if self.failures is not None else 0.0
        if wait:
            raise RateLimited("Too many requests with a wrong or missing key", wait)

    def failed(self, address: str) -> None:
        if self.failures is not None:
            self.failures.take(address)

    def call(self, key_id: str) -> None:
        wait = self.calls.take(key_id) if self.calls is not None else 0.0
        if wait:
            raise RateLimited("Too many requests for this key", wait)


def credentials(request: Request) -> str | None:
    """The ``key_id:secret`` string of the Authorization header, if there is one."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() in ("key", "bearer") and value.strip():
        return value.strip()
    return None


_verified: dict[str, tuple[KeyInfo, float]] = {}

# Declares the header in /openapi.json (the check itself reads it in ``credentials``).
API_KEY = APIKeyHeader(
    name="Authorization",
    scheme_name="fal key",
    description="'Key <key_id>:<secret>' (fal's form) or 'Bearer <key_id>:<secret>'",
    auto_error=False,
)


async def current_key(
    request: Request, _header: Annotated[str | None, Security(API_KEY)] = None
) -> KeyInfo:
    """The caller's key (a FastAPI dependency); raises ``Unauthorized`` or ``RateLimited``."""
    services = request.app.state.services
    limits: RateLimits = request.app.state.limits
    if not services.settings.auth:
        return ANONYMOUS
    address = request.client.host if request.client is not None else "unknown"
    key = credentials(request)
    if key is None:
        limits.check_address(address)
        limits.failed(address)
        raise Unauthorized("Missing credentials: send 'Authorization: Key <key_id>:<secret>'")
    digest = hashlib.sha256(key.encode()).hexdigest()  # the cache never holds a secret
    now = time.monotonic()
    cached = _verified.get(digest)
    if cached is not None and cached[1] > now:
        info: KeyInfo | None = cached[0]  # a key known good passes even from a noisy address
    else:
        limits.check_address(address)
        info = await run_in_threadpool(services.keys.check, key)
        if info is not None:
            if len(_verified) >= KEY_CACHE_MAX:
                _verified.clear()
            _verified[digest] = (info, now + c.KEY_CACHE_S)
    if info is None:
        limits.failed(address)
        raise Unauthorized("No user found for Key ID and Secret")
    limits.call(info.key_id)
    return info


async def admin_key(
    request: Request, _header: Annotated[str | None, Security(API_KEY)] = None
) -> KeyInfo:
    """The caller's key, which must have the admin scope (a FastAPI dependency)."""
    info = await current_key(request)
    if info.scope != Scope.admin:
        raise Forbidden("This needs a key with the admin scope")
    return info
