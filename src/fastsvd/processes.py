"""Which process is which on this host: enough to tell, for sure, that a process is gone.

A process is named by the host it runs on, its pid and its start time. The host is the kernel's
boot id plus the pid namespace (``/proc/self/ns/pid``): containers on one machine share a boot
id but not pids, so neither the hostname nor the boot id alone would do. The start time is
``/proc/<pid>/stat`` field 22 (clock ticks since boot), so a pid reused by another process does
not pass for the old one.

``is_gone`` answers True only when it knows: the identity is of this host, and its pid is free,
a zombie, or another process. A process elsewhere, or one whose identity could not be read (no
/proc, a mount that hides it) is never judged gone.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
BOOT_ID = PROC / "sys/kernel/random/boot_id"
DEAD_STATES = frozenset("ZXx")  # a zombie or a dead task: it holds nothing any more


@dataclass(frozen=True)
class ProcessIdentity:
    """A process: where (``host_id``), which pid, and since when (None: unknown)."""

    host_id: str | None
    pid: int
    start_ticks: int | None


@functools.cache
def host_id() -> str | None:
    """This host and pid namespace, e.g. ``"bbe0f093-...:4026531836"``; None if unreadable."""
    try:
        boot = BOOT_ID.read_text().strip()
        namespace = os.stat(PROC / "self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}:{namespace}" if boot else None


def _stat(pid: int) -> tuple[str, int]:
    """(state, start ticks) of ``pid`` from /proc (FileNotFoundError: no such process)."""
    text = (PROC / str(pid) / "stat").read_text()
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the
    # last ")"; the fields after it start at field 3 (state), and starttime is field 22.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def identity_of(pid: int) -> ProcessIdentity | None:
    """The identity of the live process ``pid`` on this host; None when there is none."""
    try:
        stat = _stat(pid)
    except (OSError, ValueError, IndexError):
        return None
    if stat[0] in DEAD_STATES:
        return None
    return ProcessIdentity(host_id(), pid, stat[1])


def this_process() -> ProcessIdentity:
    """This process (its start time None where /proc cannot be read)."""
    me = identity_of(os.getpid())
    return me if me is not None else ProcessIdentity(host_id(), os.getpid(), None)


def is_gone(who: ProcessIdentity) -> bool:
    """Whether ``who`` has certainly stopped: never for another host or an unknown identity."""
    here = host_id()
    if here is None or who.host_id != here or who.start_ticks is None:
        return False
    try:
        state, start_ticks = _stat(who.pid)
    except (FileNotFoundError, ProcessLookupError):
        return True  # no such pid: it exited and was reaped
    except (OSError, ValueError, IndexError):
        return False  # hidden or unreadable: it may be alive
    return state in DEAD_STATES or start_ticks != who.start_ticks
