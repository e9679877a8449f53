"""What every route needs, as FastAPI dependencies: the services, the caller's key, the base URL,
and the fal request headers read once, with one message each when they are wrong."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request

from fastsvd import constants as c
from fastsvd.api.auth import admin_key, current_key
from fastsvd.errors import InvalidInput
from fastsvd.services import Services
from fastsvd.store.keys import KeyInfo


def get_services(request: Request) -> Services:
    """The services ``create_app`` was given."""
    services: Services = request.app.state.services
    return services


def base_url(request: Request) -> str:
    """The URL this server is reached at, as the caller sees it (for the URLs it hands out)."""
    return str(request.base_url).rstrip("/")


def owner_of(key: KeyInfo, services: Services) -> str | None:
    """Whose requests ``key`` may see: its own, or everyone's when auth is off."""
    return key.key_id if services.settings.auth else None


ServicesDep = Annotated[Services, Depends(get_services)]
KeyDep = Annotated[KeyInfo, Depends(current_key)]
AdminDep = Annotated[KeyInfo, Depends(admin_key)]
BaseURL = Annotated[str, Depends(base_url)]


def truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes")


def priority(request: Request) -> int:
    """``x-fal-queue-priority``: priority can only be lowered, as on fal."""
    value = request.headers.get("x-fal-queue-priority", "normal").strip().lower()
    if value not in ("normal", "low", "high"):
        raise InvalidInput("x-fal-queue-priority", "must be normal or low")
    return 1 if value == "low" else 0


def idempotency_key(request: Request) -> str | None:
    value = request.headers.get("idempotency-key")
    if value is not None and not 0 < len(value) <= c.IDEMPOTENCY_KEY_MAX_CHARS:
        raise InvalidInput("idempotency-key", f"must be 1-{c.IDEMPOTENCY_KEY_MAX_CHARS} characters")
    return value


def start_deadline(request: Request) -> float | None:
    """``x-fal-request-timeout``: the time by which the request must have started."""
    raw = request.headers.get("x-fal-request-start-timeout") or request.headers.get(
        "x-fal-request-timeout"
    )
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidInput("x-fal-request-timeout", "must be a number of seconds") from None
    if not 0 < seconds < 7 * 24 * 3600:
        raise InvalidInput("x-fal-request-timeout", "must be between 0 and 604800 seconds")
    return time.time() + seconds
