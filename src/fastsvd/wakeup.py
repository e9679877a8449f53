"""Waking idle workers the moment a job is queued, and telling a busy one its job was cancelled.

On one machine (SQLite) every worker binds a UNIX datagram socket in ``<data_dir>/wake/``, and
while it waits for work it also links the socket into ``wake/idle/``. Whoever queues a job
sends one byte to one idle worker (to every worker when none is marked idle: one may be on its
way to waiting); a worker whose claim saw more jobs queued passes the wake-up on to another idle
one, so a backlog still reaches every idle worker, one claim at a time. Cancels are not pushed:
a worker reads its job's cancel flag from the local database now and then, which costs
microseconds.

On PostgreSQL the job store sends ``NOTIFY`` in the transaction that queues a job or asks for a
cancel (``store.db``), so every worker on every host hears it on commit; a worker ``LISTEN``s
on a connection of its process (shared by the workers of a process), in a thread that
reconnects with backoff when the server goes away.

Either way a missed signal costs time, never a job: an idle worker still polls the queue every
``idle_poll_s``, and a busy one still reads its cancel flag every ``constants.CANCEL_POLL_S``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path
from typing import ClassVar, Protocol

from fastsvd import constants as c
from fastsvd.retry import Backoff, Outage
from fastsvd.store.db import CANCEL_CHANNEL, POSTGRES_LINK, WAKE_CHANNEL

log = logging.getLogger("fastsvd.wakeup")


class Listener(Protocol):
    """A worker's end of the signals."""

    pushes_cancels: bool  # True: ``cancelled`` hears cancels as they are asked for

    def wait(self, timeout_s: float) -> bool:
        """Block until woken (True) or ``timeout_s`` passes (False)."""

    def wake(self) -> None:
        """End a ``wait`` now (the worker is asked to stop); safe in a signal handler."""

    def pass_on(self) -> None:
        """This worker just claimed a job and saw more queued: wake another idle one."""

    def watch(self, job_id: str | None) -> None:
        """The job this worker runs now (None: none)."""

    def cancelled(self, job_id: str) -> bool:
        """Whether a cancel of ``job_id`` was heard."""

    def close(self) -> None:
        """Stop listening."""


class NoSignals:
    """No signals at all: the worker polls the queue and reads cancel flags."""

    pushes_cancels = False

    def __init__(self) -> None:
        self._woken = threading.Event()

    def wait(self, timeout_s: float) -> bool:
        """Sleep ``timeout_s``, or until ``wake``."""
        woken = self._woken.wait(timeout_s)
        self._woken.clear()
        return woken

    def wake(self) -> None:
        """End the sleep."""
        self._woken.set()

    def pass_on(self) -> None:
        """Nobody to pass on to."""

    def watch(self, job_id: str | None) -> None:
        """Nothing to watch."""

    def cancelled(self, job_id: str) -> bool:
        """Never heard."""
        return False

    def close(self) -> None:
        """Nothing to close."""


class WakeupListener:
    """One machine: ``wait(timeout_s)`` returns early when a datagram arrives. While it waits
    between jobs its socket is also linked in ``idle/``, where a ``Waker`` looks first."""

    pushes_cancels = False

    def __init__(self, folder: Path, name: str) -> None:
        (folder / IDLE).mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.sock"
        self.idle_path = folder / IDLE / f"{name}.sock"
        for stale in (self.idle_path, self.path):  # a dead worker's of the same name
            stale.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._waker = Waker(folder)  # passes wake-ups on
        self._marked = False

    def wait(self, timeout_s: float) -> bool:
        """Block until woken (True) or ``timeout_s`` passes (False); drains extra wake-ups."""
        self._mark(True)
        self._sock.settimeout(timeout_s)
        try:
            self._sock.recv(64)
        except (TimeoutError, BlockingIOError):  # a timeout of 0 makes the socket non-blocking
            return False
        self._sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while self._sock.recv(64):
                pass
        return True

    def wake(self) -> None:
        """Send our own socket a byte."""
        with contextlib.suppress(OSError):
            self._sock.sendto(b"!", str(self.path))

    def pass_on(self) -> None:
        """Wake another idle worker: there may be more jobs queued."""
        self._waker.wake_one()

    def watch(self, job_id: str | None) -> None:
        """A job started here: no longer idle. (Cancels are read from the database.)"""
        if job_id is not None:
            self._mark(False)

    def cancelled(self, job_id: str) -> bool:
        """Never pushed on one machine."""
        return False

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        self._mark(False)
        self._waker.close()
        self._sock.close()
        self.path.unlink(missing_ok=True)

    def _mark(self, idle: bool) -> None:
        if idle == self._marked:
            return
        self._marked = idle
        if idle:  # unmarked where links fail: a waker with no idle worker wakes every one
            with contextlib.suppress(OSError):
                os.link(self.path, self.idle_path)
        else:
            self.idle_path.unlink(missing_ok=True)


class PostgresListener(NoSignals):
    """A worker's ``LISTEN`` for queued jobs and cancels: the hub sets the wake-up event that
    ``wait`` sleeps on.

    The workers of one process share one connection and one thread (``_Hub``), which reconnects
    with backoff when the server goes away.
    """

    pushes_cancels = True

    def __init__(self, url: str) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._watching: str | None = None
        self._cancelled = False
        self._hub = _Hub.join(url.replace("postgresql+psycopg://", "postgresql://", 1), self)

    @property
    def connected(self) -> threading.Event:
        """Set while ``LISTEN`` is in place (for tests and start-up)."""
        return self._hub.connected

    def pass_on(self) -> None:
        """Wake another idle worker of this process: a backlog fans out one claim at a time."""
        self._hub.wake_one()

    def watch(self, job_id: str | None) -> None:
        """Listen for cancels of ``job_id`` from now on."""
        with self._lock:
            self._watching = job_id
            self._cancelled = False

    def cancelled(self, job_id: str) -> bool:
        """Whether a cancel of the watched ``job_id`` arrived."""
        with self._lock:
            return self._cancelled and self._watching == job_id

    @property
    def idle(self) -> bool:
        """Waiting, with no wake-up pending: a wake-up would make it claim a job."""
        return self._watching is None and not self._woken.is_set()

    def close(self) -> None:
        """Stop listening (the last listener of a process closes the connection)."""
        self._hub.leave(self)

    def _heard(self, channel: str, payload: str) -> None:
        if channel == WAKE_CHANNEL:
            self._woken.set()
        elif channel == CANCEL_CHANNEL:
            with self._lock:
                if payload == self._watching:
                    self._cancelled = True


class _Hub:
    """One ``LISTEN`` connection per process and database, fanned out to its listeners."""

    _hubs: ClassVar[dict[str, _Hub]] = {}
    _hubs_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.listeners: set[PostgresListener] = set()
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._listen, name="pg-listener", daemon=True)
        self._turn = 0

    @classmethod
    def join(cls, conninfo: str, listener: PostgresListener) -> _Hub:
        with cls._hubs_lock:
            hub = cls._hubs.get(conninfo)
            if hub is None:
                hub = cls._hubs[conninfo] = _Hub(conninfo)
                hub.thread.start()
            hub.listeners.add(listener)
            if hub.connected.is_set():
                listener.wake()  # look at the queue once, as after any (re)connection
            return hub

    def leave(self, listener: PostgresListener) -> None:
        with self._hubs_lock:
            self.listeners.discard(listener)
            if self.listeners:
                return
            self._hubs.pop(self.conninfo, None)
            self.stop.set()
        self.thread.join(c.LISTEN_POLL_S * 4)

    def _each(self) -> list[PostgresListener]:
        with self._hubs_lock:
            return list(self.listeners)

    def wake_one(self) -> None:
        """Wake one idle listener, taking turns."""
        idle = [listener for listener in self._each() if listener.idle]
        if idle:
            self._turn = (self._turn + 1) % len(idle)
            idle[self._turn].wake()

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == WAKE_CHANNEL:
            # One queued job needs one worker: wake one idle listener of this process, not all
            # of them (each would try a claim). One that gets a job and sees more queued passes
            # the wake-up on (``pass_on``), so a backlog still reaches every idle worker.
            self.wake_one()
            return
        listeners = self._each()
        for listener in listeners:
            listener._heard(channel, payload)

    def _listen(self) -> None:
        import psycopg
        from psycopg.conninfo import make_conninfo

        backoff = Backoff()
        outage = Outage(log)
        while not self.stop.is_set():
            try:
                conninfo = make_conninfo(self.conninfo, **POSTGRES_LINK)
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                    outage.answered()
                    backoff.reset()
                    for listener in self._each():
                        listener.wake()  # whatever was sent while away: look at the queue
                    self.connected.set()
                    while not self.stop.is_set():
                        for note in conn.notifies(timeout=c.LISTEN_POLL_S):
                            self._dispatch(note.channel, note.payload)
            except psycopg.Error as exc:
                self.connected.clear()
                outage.failed(f"lost the database notifications ({exc})")
                self.stop.wait(backoff.next())


IDLE = "idle"  # the folder of the sockets of workers waiting for work


class Waker:
    """One machine's queueing end: wakes the workers listening on this machine."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._turn = 0

    def wake_one(self) -> None:
        """One job was queued: wake one idle worker, taking turns; every worker when none is
        marked idle (one may be between finding the queue empty and waiting)."""
        idle = self._sockets(self.folder / IDLE)
        while idle:
            self._turn = (self._turn + 1) % len(idle)
            if self._send(idle.pop(self._turn)):
                return
        self.wake_all()

    def wake_all(self) -> None:
        """Send each worker socket one byte; sockets nobody listens on are removed."""
        for path in self._sockets(self.folder):
            self._send(path)

    def _send(self, path: str) -> bool:
        """Whether a listening worker got the byte (or has one waiting already)."""
        try:
            self._sock.sendto(b"!", path)
        except ConnectionRefusedError:
            Path(path).unlink(missing_ok=True)  # its worker is gone
            return False
        except BlockingIOError:
            pass  # its buffer is full: it will wake anyway
        except OSError:
            return False  # it just stopped waiting, or left (or its path is too long to use)
        return True

    @staticmethod
    def _sockets(folder: Path) -> list[str]:
        try:
            return [e.path for e in os.scandir(folder) if e.name.endswith(".sock")]
        except FileNotFoundError:
            return []

    def close(self) -> None:
        """Close the sending socket."""
        self._sock.close()


class NotifyWaker:
    """PostgreSQL's queueing end: nothing to do, the job store's ``NOTIFY`` wakes the workers."""

    def wake_one(self) -> None:
        """The notification went out with the submit's transaction."""

    def wake_all(self) -> None:
        """The notification went out with the transaction that requeued the jobs."""

    def close(self) -> None:
        """Nothing to close."""
