"""``Authorization: Key <key_id>:<secret>`` (or ``Bearer``), checked against hashed keys."""

from __future__ import annotations

from fastapi import Request

from fastsvd.store.keys import KeyInfo, Scope

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


def current_key(request: Request) -> KeyInfo:
    """The caller's key (a FastAPI dependency); raises ``Unauthorized``."""
    services = request.app.state.services
    if not services.settings.auth:
        return ANONYMOUS
    key = credentials(request)
    if key is None:
        raise Unauthorized("Missing credentials: send 'Authorization: Key <key_id>:<secret>'")
    info: KeyInfo | None = services.keys.check(key)
    if info is None:
        raise Unauthorized("No user found for Key ID and Secret")
    return info
