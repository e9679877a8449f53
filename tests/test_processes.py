"""Process identities on this host: a pid plus its start time, judged gone only when certain."""

from __future__ import annotations

import dataclasses
import os
import subprocess

from fastsvd.processes import identity_of, is_gone, this_process


def test_this_process_is_identified_and_alive() -> None:
    me = this_process()
    assert me.pid == os.getpid()
    assert me.host_id  # Linux: a boot id and a pid namespace
    assert me.start_ticks is not None  # and /proc
    assert identity_of(os.getpid()) == me
    assert not is_gone(me)


def test_a_reaped_process_is_gone_and_a_reused_pid_is_not_the_same_process() -> None:
    child = subprocess.Popen(["sleep", "60"])
    started = identity_of(child.pid)
    assert started is not None
    assert not is_gone(started)
    child.kill()
    child.wait()
    assert is_gone(started)
    me = this_process()
    assert me.start_ticks is not None
    assert is_gone(dataclasses.replace(me, start_ticks=me.start_ticks + 1))


def test_an_exited_but_unreaped_process_is_gone() -> None:
    child = subprocess.Popen(["sleep", "60"])
    started = identity_of(child.pid)
    assert started is not None
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    try:
        assert is_gone(started)
    finally:
        child.wait()


def test_unknown_or_foreign_identities_are_never_gone() -> None:
    me = this_process()
    assert not is_gone(dataclasses.replace(me, pid=2**22 + 7, host_id="another-host"))
    assert not is_gone(dataclasses.replace(me, pid=2**22 + 7, start_ticks=None))
    assert not is_gone(dataclasses.replace(me, pid=2**22 + 7, host_id=None))
