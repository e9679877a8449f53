"""Waking idle workers the moment a job is queued, and telling a busy one its job was cancelled.

On one machine (SQLite) every worker binds a UNIX datagram socket in ``<data_dir>/wake/``, and
while it waits for work it also links the socket into ``wake/idle/``. Whoever queues a job
sends one byte to one idle worker (to every worker when none is marked idle: one may be on its
way to waiting); a worker whose claim saw more jobs queued passes the wake-up on to another idle
one, so a backlog still reaches every idle worker, one claim at a time. Cancels are not pushed:
a worker reads its job's cancel flag from the local database now and then, which costs
microseconds.

On PostgreSQL the job store sends ``NOTIFY`` in the transaction that queues a job or asks for a
cancel (``store.db``), heard on commit; a worker ``LISTEN``s on a connection of its process
(shared by the workers of a process), in a thread that reconnects with backoff when the server
goes away. A worker waiting for work marks itself idle in the roster (``IdleMark``), and a
submit wakes the one that has waited longest, through its process's own channel, taking its
mark in the same statement (``JobStore.submit``): one worker claims, however many wait. With
none marked, or when the one named has just taken other work, the wake-up goes to every
process, and each wakes one idle worker of its own, if it has one.

Either way a missed signal costs time, never a job: an idle worker still polls the queue every
``idle_poll_s``, and a busy one still reads its cancel flag every ``constants.CANCEL_POLL_S``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from fastsvd import constants as c
from fastsvd.retry import Backoff, Outage, best_effort
from fastsvd.store.db import CANCEL_CHANNEL, POSTGRES_LINK, WAKE_CHANNEL

if TYPE_CHECKING:
    from fastsvd.store.db import Database
    from fastsvd.store.workers import WorkerRoster

log = logging.getLogger("fastsvd.wakeup")


class Listener(Protocol):
    """A worker's end of the signals."""

    pushes_cancels: bool  # True: ``cancelled`` hears cancels as they are asked for
    channel: str | None  # PostgreSQL: where wake-ups meant for this worker's process arrive
    marks_idle: bool  # True: a worker waiting for work is marked idle in the roster

    def wait(self, timeout_s: float) -> bool:
        """Block until woken (True) or ``timeout_s`` passes (False)."""

    def wake(self) -> None:
        """End a ``wait`` now (the worker is asked to stop); safe in a signal handler."""

    def pass_on(self) -> None:
        """This worker just claimed a job and saw more queued: wake another idle one."""

    def marked_idle(self) -> None:
        """The roster marks this worker idle already (written with its last result)."""

    def watch(self, job_id: str | None) -> None:
        """The job this worker runs now (None: none)."""

    def cancelled(self, job_id: str) -> bool:
        """Whether a cancel of ``job_id`` was heard."""

    def close(self) -> None:
        """Stop listening."""


class NoSignals:
    """No signals at all: the worker polls the queue and reads cancel flags."""

    pushes_cancels = False
    channel: str | None = None
    marks_idle = False

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

    def marked_idle(self) -> None:
        """Never marked."""

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
    channel: str | None = None
    marks_idle = False  # its socket is linked in ``idle/`` instead

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

    def marked_idle(self) -> None:
        """Never marked in the roster."""

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


@dataclass(frozen=True)
class IdleMark:
    """A worker's mark in the roster while it waits for work (PostgreSQL), where a submit finds
    it; both writes are skipped while the database is away (a submit then wakes everyone)."""

    name: str
    db: Database
    roster: WorkerRoster

    def set(self, idle: bool) -> None:
        best_effort(lambda: self.roster.mark_idle(self.name, idle))

    def wake_everyone(self) -> None:
        """Pass a wake-up meant for this process, which has no idle worker, to every process."""

        def send() -> None:
            with self.db.statement() as conn:
                self.db.notify(conn, WAKE_CHANNEL)

        best_effort(send)


class PostgresListener(NoSignals):
    """A worker's ``LISTEN`` for queued jobs and cancels: the hub sets the wake-up event that
    ``wait`` sleeps on. With an ``IdleMark`` the worker is marked idle while it waits, and
    submits wake it by name.

    The workers of one process share one connection and one thread (``_Hub``), which reconnects
    with backoff when the server goes away.
    """

    pushes_cancels = True

    def __init__(self, url: str, mark: IdleMark | None = None) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._watching: str | None = None
        self._cancelled = False
        self.mark = mark
        self._marked = False  # the roster says idle, as far as this worker knows
        self._hub = _Hub.join(url.replace("postgresql+psycopg://", "postgresql://", 1), self)
        self.channel = self._hub.channel if mark is not None else None
        self.marks_idle = mark is not None

    @property
    def name(self) -> str | None:
        return self.mark.name if self.mark is not None else None

    @property
    def connected(self) -> threading.Event:
        """Set while ``LISTEN`` is in place (for tests and start-up)."""
        return self._hub.connected

    def wait(self, timeout_s: float) -> bool:
        """Marked idle (once), then as ``NoSignals.wait``."""
        if self.mark is not None and not self._marked:
            self._marked = True
            self.mark.set(True)
        return super().wait(timeout_s)

    def pass_on(self) -> None:
        """Wake another idle worker of this process: a backlog fans out one claim at a time."""
        self._hub.wake_one()

    def marked_idle(self) -> None:
        """The mark was written with the last result: ``wait`` need not write it."""
        self._marked = self.mark is not None

    def watch(self, job_id: str | None) -> None:
        """Listen for cancels of ``job_id`` from now on; a job started: no longer idle."""
        with self._lock:
            self._watching = job_id
            self._cancelled = False
        if job_id is not None and self.mark is not None and self._marked:
            self._marked = False  # woken otherwise than by a submit that took the mark
            self.mark.set(False)

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

    def _picked(self) -> None:
        """A submit took this worker's idle mark (and named it in its wake-up)."""
        self._marked = False

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
        self.channel = f"{WAKE_CHANNEL}_{secrets.token_hex(8)}"  # wake-ups meant for this one
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

    def wake_one(self) -> bool:
        """Wake one idle listener, taking turns; False when none is idle."""
        idle = [listener for listener in self._each() if listener.idle]
        if not idle:
            return False
        self._turn = (self._turn + 1) % len(idle)
        idle[self._turn].wake()
        return True

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == WAKE_CHANNEL:
            # Every process hears it (no worker was marked idle): wake one idle listener of
            # this process, not all of them (each would try a claim). One that gets a job and
            # sees more queued passes the wake-up on (``pass_on``), so a backlog still reaches
            # every idle worker.
            self.wake_one()
            return
        if channel == self.channel:  # a submit picked one of this process's workers
            name = payload.partition(" ")[0]
            listeners = self._each()
            named = next((one for one in listeners if one.name == name), None)
            if named is not None:
                named._picked()
                if named.idle:
                    named.wake()
                    return
            # It took other work meanwhile, or is gone: another idle worker here, else all.
            if not self.wake_one():
                marks = [one.mark for one in listeners if one.mark is not None]
                if marks:
                    marks[0].wake_everyone()
            return
        for listener in self._each():
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
                    for channel in (WAKE_CHANNEL, CANCEL_CHANNEL, self.channel):
                        conn.execute(f"LISTEN {channel}")
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
