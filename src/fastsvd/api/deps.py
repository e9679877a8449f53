"""What every route needs, as FastAPI dependencies: the services, the caller's key, the base URL,
and the fal request headers read once, with one message each when they are wrong."""

from __future__ import annotations

import json
import math
import time
from typing import Annotated

from fastapi import Depends, Request

from fastsvd import constants as c
from fastsvd.api.auth import admin_key, current_key
from fastsvd.errors import InvalidInput
from fastsvd.services import Services
from fastsvd.settings import flag
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
    """A yes/no query value (``settings.flag``); anything else is no."""
    try:
        return flag(value) is True
    except ValueError:
        return False


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
    """``x-fal-request-timeout`` (or its newer name ``x-fal-request-start-timeout``): the time
    by which the request must have started, more than 0.1 s away as on fal."""
    header = "x-fal-request-start-timeout"
    raw = request.headers.get(header)
    if raw is None:
        header = "x-fal-request-timeout"
        raw = request.headers.get(header)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidInput(header, "must be a number of seconds") from None
    if not c.START_TIMEOUT_MIN_S < seconds < c.START_TIMEOUT_MAX_S:
        raise InvalidInput(
            header,
            f"must be more than {c.START_TIMEOUT_MIN_S} and less than "
            f"{c.START_TIMEOUT_MAX_S:.0f} seconds",
        )
    return time.time() + seconds


def no_retry(request: Request) -> bool:
    """``x-fal-no-retry``: 1, true or yes: the request is not run again if its worker dies."""
    try:
        return flag(request.headers.get("x-fal-no-retry")) is True
    except ValueError as exc:
        raise InvalidInput("x-fal-no-retry", str(exc)) from None


def output_lifetime(request: Request, max_s: float) -> float | None:
    """``x-fal-object-lifecycle-preference``: ``{"expiration_duration_seconds": N}``, how long
    the request's files (the first-frame preview, the video) are kept; never beyond ``max_s``,
    the server's own retention. None (no header, or 0, fal's "no expiration"): the server's
    retention."""
    header = "x-fal-object-lifecycle-preference"
    raw = request.headers.get(header)
    if raw is None:
        return None
    usage = 'must be a JSON object such as {"expiration_duration_seconds": 3600}'
    try:
        preference = json.loads(raw, parse_constant=lambda _name: None)
    except ValueError:
        raise InvalidInput(header, usage) from None
    if not isinstance(preference, dict):
        raise InvalidInput(header, usage)
    if "expiration_duration_seconds" not in preference:
        return None  # e.g. only fal's initial_acl, which has no meaning here
    seconds = preference["expiration_duration_seconds"]
    number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
    if not number or (isinstance(seconds, float) and not math.isfinite(seconds)) or seconds < 0:
        raise InvalidInput(header, "expiration_duration_seconds must be a number of seconds")
    if seconds == 0:
        return None  # fal's "no expiration": here, the server's retention
    return float(min(seconds, max_s))
