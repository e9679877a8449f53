"""``Authorization: Key <key_id>:<secret>`` (or ``Bearer``), checked against hashed keys."""

from __future__ import annotations

import hashlib
import time

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from fastsvd.store.keys import KeyInfo, Scope

# Verified keys are remembered this long, so a client polling every 0.1 s costs no key lookup;
# a revoked key stops working within this time.
KEY_CACHE_S = 5.0
KEY_CACHE_MAX = 10_000

ANONYMOUS = KeyInfo("local", "auth off", Scope.admin, 0.0, None, "whsec_")


class Unauthorized(Exception):
    """The request carries no valid key."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def credentials(request: Request) -> str | None:
    """The ``key_id:secret`` string of the Authorization header, if there is one."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() in ("key", "bearer") and value.strip():
        return value.strip()
    return None


_verified: dict[str, tuple[KeyInfo, float]] = {}


async def current_key(request: Request) -> KeyInfo:
    """The caller's key (a FastAPI dependency); raises ``Unauthorized``."""
    services = request.app.state.services
    if not services.settings.auth:
        return ANONYMOUS
    key = credentials(request)
    if key is None:
        raise Unauthorized("Missing credentials: send 'Authorization: Key <key_id>:<secret>'")
    digest = hashlib.sha256(key.encode()).hexdigest()  # the cache never holds a secret
    now = time.monotonic()
    cached = _verified.get(digest)
    if cached is not None and cached[1] > now:
        return cached[0]
    info: KeyInfo | None = await run_in_threadpool(services.keys.check, key)
    if info is None:
        raise Unauthorized("No user found for Key ID and Secret")
    if len(_verified) >= KEY_CACHE_MAX:
        _verified.clear()
    _verified[digest] = (info, now + KEY_CACHE_S)
    return info
