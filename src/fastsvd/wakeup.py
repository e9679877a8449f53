"""Waking idle workers the moment a job is queued, without polling on a fixed interval.

On one machine every worker binds a UNIX datagram socket in ``<data_dir>/wake/``; whoever queues a
job (or asks for a cancel) sends one byte to each. A worker blocks on its socket with a long
timeout, which is only a safety net. A lost datagram costs at most that timeout, never a job.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


class WakeupListener:
    """A worker's end: ``wait(timeout_s)`` returns early when woken."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.sock"
        self.path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))

    def wait(self, timeout_s: float) -> bool:
        """Block until woken (True) or ``timeout_s`` passes (False); drains extra wake-ups."""
        self._sock.settimeout(timeout_s)
        try:
            self._sock.recv(64)
        except TimeoutError:
            return False
        self._sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while self._sock.recv(64):
                pass
        return True

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        self._sock.close()
        self.path.unlink(missing_ok=True)


class Waker:
    """The queueing end: wakes every listening worker on this machine."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def wake_all(self) -> None:
        """Send each worker socket one byte; sockets nobody listens on are removed."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        for entry in entries:
            if not entry.name.endswith(".sock"):
                continue
            try:
                self._sock.sendto(b"!", entry.path)
            except ConnectionRefusedError:
                Path(entry.path).unlink(missing_ok=True)  # its worker is gone
            except (BlockingIOError, FileNotFoundError):
                pass  # its buffer is full (it will wake anyway) or it just left
