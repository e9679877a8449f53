"""Real links to cut, for the fault tests: a network namespace of the test's own, nftables rules
that silently drop a port's packets in it, and relays that carry a port in it to PostgreSQL.

The processes under test are started from a thread that has entered the namespace (``inside``),
so they and everything they listen on live there, on its loopback, and nothing they do can reach
or disturb the machine's own ports. PostgreSQL is the machine's (``tests.databases``); each
process reaches it through a port of its own in the namespace (``Relay``), so that one process
can be cut off from the database (``Namespace.cut``) while the others still reach it. A cut drops
packets both ways without an answer, as a failed switch or a partition does: no reset, no ICMP.

Needs root, ``ip netns`` and ``nft``; ``unavailable()`` says why they cannot be used here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import selectors
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def unavailable() -> str | None:
    """Why namespaces and nftables cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces and nftables rules need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed (iproute2, nftables)"
    return None


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


class Namespace:
    """A network namespace with its loopback up and an nftables table to cut ports with."""

    def __init__(self) -> None:
        self.name = f"fastsvd-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            self.run("ip", "link", "set", "lo", "up")
            self.nft(
                "add table inet fault; "
                "add set inet fault cut { type inet_service; }; "
                "add chain inet fault out { type filter hook output priority 0; }; "
                "add rule inet fault out tcp dport @cut drop; "
                "add rule inet fault out tcp sport @cut drop"
            )
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def run(self, *command: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, *command], check=True)

    def nft(self, script: str) -> None:
        self.run("nft", script)

    def cut(self, port: int) -> None:
        """Drop every packet to or from ``port`` in the namespace, silently."""
        self.nft(f"add element inet fault cut {{ {port} }}")

    def mend(self, port: int) -> None:
        """Let ``port``'s packets through again."""
        self.nft(f"delete element inet fault cut {{ {port} }}")

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Run the calling thread in the namespace: its sockets, and the processes it starts,
        live there."""
        here = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        home = os.open(here, os.O_RDONLY)
        try:
            _setns(self.path)
            try:
                yield
            finally:
                if _libc.setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(home)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


class Relay:
    """Carries connections to a port on the namespace's loopback to ``upstream`` outside it."""

    def __init__(self, namespace: Namespace, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        with namespace.inside():
            self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                near, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                far = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                near.close()
                continue
            with self.lock:
                self.sockets += [near, far]
            threading.Thread(target=self._pipe, args=(near, far), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        a.settimeout(None)
        b.settimeout(None)
        with selectors.DefaultSelector() as selector:
            selector.register(a, selectors.EVENT_READ, b)
            selector.register(b, selectors.EVENT_READ, a)
            while not self.stopping.is_set():
                for key, _ in selector.select(0.2):
                    source, sink = key.fileobj, key.data
                    try:
                        data = source.recv(65536)  # type: ignore[union-attr]
                        if data:
                            sink.sendall(data)
                            continue
                    except OSError:
                        pass
                    a.close()
                    b.close()
                    return

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.thread.join(2)
        with self.lock:
            for sock in self.sockets:
                sock.close()


def relayed_url(url: str, port: int) -> str:
    """``url`` (a database URL on 127.0.0.1) with its port replaced by ``port``."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def mount_tmpfs(path: Path, size_kib: int) -> None:
    """A small tmpfs at ``path``: a disk that fills up after ``size_kib`` KiB."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)], check=True
    )


def fill(path: Path) -> None:
    """Write ``path`` until its disk has no room left."""
    block = b"\0" * 4096
    with path.open("wb", buffering=0) as out:
        for _ in range(1 << 20):  # bounded: 4 GiB
            try:
                out.write(block)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return
                raise
    raise AssertionError(f"{path}: the disk never filled")


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)
