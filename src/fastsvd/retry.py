"""One way to wait out an unavailable dependency: doubling delays, retried until it answers.

The job store raises ``StoreUnavailable`` when its database cannot be reached, and the file
storage ``StorageUnavailable`` when its object store cannot be reached or its disk is full (both
``Unavailable``, and nothing else means "retry later"). Every loop that must survive an outage (a
worker's claims and writes, the webhook deliverer, the server's housekeeping) calls
``until_available`` instead of writing its own backoff, and reports the outage through an
``Outage``: one warning when it starts and one when it ends, never a traceback.

A running job's writes use the two shapes built on it: ``until_written`` (the result, the
failure, the hand-back: retried until they land, the lease is lost or a deadline passes) and
``best_effort`` (progress lines, cancel polls, previews: skipped while a store is away).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from fastsvd import constants as c
from fastsvd.errors import Unavailable

log = logging.getLogger("fastsvd.retry")

T = TypeVar("T")


class Backoff:
    """Delays that double from ``first_s`` up to ``most_s``; ``reset`` after a success."""

    def __init__(self, first_s: float = c.FIRST_DELAY_S, most_s: float = c.MAX_DELAY_S) -> None:
        self.first_s = first_s
        self.most_s = most_s
        self.delay_s = first_s

    def next(self) -> float:
        """The delay to wait now; the one after it is twice as long (up to ``most_s``)."""
        delay, self.delay_s = self.delay_s, min(self.delay_s * 2, self.most_s)
        return delay

    def reset(self) -> None:
        self.delay_s = self.first_s

    @property
    def retrying(self) -> bool:
        """Whether a delay has been handed out since the last ``reset``."""
        return self.delay_s > self.first_s


class Outage:
    """Whether a dependency is down, logged once when an outage starts and once when it ends."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.log = logger
        self.since: float | None = None  # monotonic time of the first failure
        self.what = ""

    @property
    def down(self) -> bool:
        return self.since is not None

    @property
    def down_s(self) -> float:
        """How long the current outage has lasted (0 when there is none)."""
        return 0.0 if self.since is None else time.monotonic() - self.since

    def failed(self, reason: str) -> None:
        """A call failed because the dependency is unavailable (``reason`` says how)."""
        if self.since is None:
            self.since = time.monotonic()
            self.what = reason
            self.log.warning("%s; waiting for it", reason)

    def answered(self) -> None:
        """A call to the dependency worked."""
        if self.since is not None:
            self.log.warning("back after %.1f s: %s", self.down_s, self.what)
            self.since = None


def until_available(
    call: Callable[[], T],
    *,
    wait: Callable[[float], object] = time.sleep,
    give_up: Callable[[], bool] = lambda: False,
    outage: Outage | None = None,
) -> T | None:
    """``call()``, retried with backoff while a dependency is unavailable.

    Returns its result, or None once ``give_up()`` is true after a failure (a lost lease, a
    shutdown, a deadline). ``wait`` sleeps (pass an ``Event.wait`` to wake early on a stop);
    ``outage`` (by default one of this call's own) logs the start and the end of the wait.
    """
    backoff = Backoff()
    outage = outage or Outage()
    while True:
        try:
            result = call()
        except Unavailable as exc:
            outage.failed(exc.message)
            if give_up():
                return None
            wait(backoff.next())
            continue
        outage.answered()
        return result


def until_written(
    write: Callable[[], T],
    *,
    outage: Outage,
    lost: threading.Event | None = None,
    deadline_s: float = 0,
) -> T | None:
    """``write()``, retried while a store is unavailable: until it works, or None once the
    lease is lost (``lost``) or ``deadline_s`` seconds pass (0: never)."""
    give_up_at = time.monotonic() + deadline_s if deadline_s else None

    def give_up() -> bool:
        return (lost is not None and lost.is_set()) or (
            give_up_at is not None and time.monotonic() > give_up_at
        )

    return until_available(write, give_up=give_up, outage=outage)


def best_effort(read: Callable[[], T]) -> T | None:
    """``read()``, or None while a store is unavailable."""
    try:
        return read()
    except Unavailable:
        return None
