"""``Every``: a thing done at most once a period, by whichever thread asks first."""

from __future__ import annotations

import threading
import time


class Every:
    """True at most once every ``period_s`` seconds, the first time one period from now (what
    it paces has just been done). Threads may share one: each period, one of them is told."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.next_at = time.monotonic() + period_s
        self._lock = threading.Lock()

    def due(self) -> bool:
        """Whether it is time (the caller does it now: the next is one period later)."""
        now = time.monotonic()
        if now < self.next_at:  # read without the lock: the common answer costs nothing
            return False
        with self._lock:
            if now < self.next_at:  # another thread was told first
                return False
            self.next_at = now + self.period_s
            return True

    def seconds_left(self) -> float:
        """How long until it is due (0: it is)."""
        return max(0.0, self.next_at - time.monotonic())
