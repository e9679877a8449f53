"""One way to wait out an unavailable job store: doubling delays, retried until it answers.

The store raises ``StoreUnavailable`` (and only that) when its database cannot be reached; every
loop that must survive a database restart (a worker's claims and writes, the webhook deliverer)
calls ``until_available`` instead of writing its own backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from fastsvd.errors import StoreUnavailable

log = logging.getLogger("fastsvd.retry")

T = TypeVar("T")
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 10.0


class Backoff:
    """Delays that double from ``first_s`` up to ``most_s``; ``reset`` after a success."""

    def __init__(self, first_s: float = FIRST_DELAY_S, most_s: float = MAX_DELAY_S) -> None:
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


def until_available(
    call: Callable[[], T],
    *,
    wait: Callable[[float], object] = time.sleep,
    give_up: Callable[[], bool] = lambda: False,
) -> T | None:
    """``call()``, retried with backoff while the job store is unavailable.

    Returns its result, or None once ``give_up()`` is true after a failure (a lost lease, a
    shutdown, a deadline). ``wait`` sleeps (pass an ``Event.wait`` to wake early on a stop).
    """
    backoff = Backoff()
    while True:
        try:
            return call()
        except StoreUnavailable as exc:
            if give_up():
                log.warning("%s; giving up", exc.message)
                return None
            delay = backoff.next()
            log.warning("%s; retrying in %.1f s", exc.message, delay)
            wait(delay)
