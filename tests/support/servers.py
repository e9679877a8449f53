"""A real fastsvd server process on loopback, and the waits of the tests that drive one.

Tests wait for the event they are about (a state in the store, a status, a log line, a
webhook) with ``wait_for``, under a ceiling (``CEILING_S``) generous enough for a slow, shared
machine: it bounds a hang, it is not a performance budget. Where a test is about speed it
asserts the order of events (the job restarted before its old lease could have expired), not
seconds of wall clock.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

import fastsvd
from fastsvd.serve import FIRST_KEY_FILE
from fastsvd.store.db import Database
from fastsvd.store.jobs import Job, JobStore
from fastsvd.store.keys import KeyStore
from fastsvd.store.tables import jobs
from tests.databases import database_url
from tests.objectstore import ObjectStore, free_port

ROOT = Path(__file__).resolve().parents[2]
# The servers run the fastsvd these tests import (a checkout's src/, or whatever PYTHONPATH
# names), not whichever copy happens to be installed; ROOT makes tests.fakes importable.
PYTHONPATH = os.pathsep.join(
    p
    for p in (
        str(Path(fastsvd.__file__).resolve().parents[1]),
        os.environ.get("PYTHONPATH"),
        str(ROOT),
    )
    if p
)
CEILING_S = 120.0  # the longest any single wait may take before the test fails


def wait_for(predicate: Callable[[], object], what: str, timeout_s: float = CEILING_S) -> None:
    """Poll ``predicate`` until it is true; fail, naming ``what``, after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.05)


def log_time(line: str) -> float:
    """The UNIX time of a text-format log line ("2026-01-31 12:00:00,123 INFO ...")."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass
class Server:
    """A running ``fastsvd serve``."""

    url: str
    key: str
    data_dir: Path
    process: subprocess.Popen[str]
    log_path: Path
    database_url: str

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Key {key or self.key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid), "-f", "fastsvd.cli worker"],
            capture_output=True,
            text=True,
            check=False,
        )
        return [int(p) for p in out.stdout.split()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self, containing: str) -> list[str]:
        return [line for line in self.log().splitlines() if containing in line]

    def stop_between_writes(self, pid: int, request_id: str) -> None:
        """SIGSTOP ``pid`` at a moment it holds no lock that others need to take over
        ``request_id``.

        A process frozen inside a write transaction keeps its locks until it continues: on
        SQLite the database's one write lock (every writer waits), on PostgreSQL the job's row
        (the reaper skips it). No store can take those from a live process, so a zombie test
        that happens to stop its worker mid-write (a few ms of every step) tests nothing but
        that; it stops the worker again until the locks are free.
        """
        for _ in range(200):
            os.kill(pid, signal.SIGSTOP)
            if not self._locked_by_a_stopped_process(request_id):
                return
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.01)
        raise AssertionError(f"worker {pid} never stopped outside a write")

    def _locked_by_a_stopped_process(self, request_id: str, wait_s: float = 2.0) -> bool:
        """Whether the lock a takeover of ``request_id`` needs stays taken for ``wait_s``
        (live processes hold it for milliseconds)."""
        if self.database_url.startswith("sqlite"):
            import sqlite3

            path = self.database_url.removeprefix("sqlite:///")
            conn = sqlite3.connect(path, timeout=wait_s, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError:
                return True
            finally:
                conn.close()
        db = Database(self.database_url)
        try:
            with db.write() as conn:
                conn.execute(text(f"SET LOCAL lock_timeout = '{int(wait_s * 1000)}ms'"))
                conn.execute(select(jobs.c.id).where(jobs.c.id == request_id).with_for_update())
            return False
        except Exception as exc:
            if "lock timeout" in str(exc):
                return True
            raise
        finally:
            db.dispose()

    def job(self, request_id: str) -> Job:
        """The job as the store holds it (attempts, lease, timings)."""
        db = Database(self.database_url)
        try:
            job = JobStore(db).get(request_id)
        finally:
            db.dispose()
        assert job is not None, request_id
        return job

    def lease_owner(self, request_id: str) -> str | None:
        """The worker holding the job now ("host-pid"), if any."""
        db = Database(self.database_url)
        try:
            with db.read() as conn:
                owner = conn.scalar(select(jobs.c.lease_owner).where(jobs.c.id == request_id))
        finally:
            db.dispose()
        return str(owner) if owner is not None else None

    @contextlib.contextmanager
    def key_store(self) -> Iterator[KeyStore]:
        """The server's keys, read and written directly in its database."""
        db = Database(self.database_url)
        try:
            yield KeyStore(db)
        finally:
            db.dispose()


def start_server(tmp: Path, **env: str) -> Server:
    """Start ``fastsvd serve``; wait for /ready (or /health when it runs no worker, or
    when ``_PROBE`` says so). With ``FASTSVD_TLS_CERT`` it speaks https, and ``_CA_FILE``
    names the CA that the probe trusts."""
    probe = env.pop("_PROBE", "/health" if env.get("FASTSVD_WORKERS") == "0" else "/ready")
    ca_file = env.pop("_CA_FILE", None)
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / "server.log"
    environment = {
        **os.environ,
        "FASTSVD_DATA_DIR": str(tmp / "data"),
        "FASTSVD_PORT": str(port),
        "FASTSVD_RUNNER": "tests.fakes.runner:Runner",
        "FASTSVD_IDLE_POLL_S": "5",
        # tests poll hard through one key; tests/security turns the rate limits back on
        "FASTSVD_REQUESTS_PER_S": "0",
        "FASTSVD_SUBMITS_PER_MINUTE": "0",
        "FASTSVD_AUTH_FAILURES_PER_S": "0",
        "PYTHONPATH": PYTHONPATH,
        **env,
    }
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "fastsvd.cli", "serve"],
            cwd=ROOT,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    scheme = "https" if environment.get("FASTSVD_TLS_CERT") else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + CEILING_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}{probe}", timeout=1, verify=verify).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError(f"server not ready:\n{log_path.read_text()}")
    data_dir = Path(environment["FASTSVD_DATA_DIR"])
    key_file = data_dir / FIRST_KEY_FILE
    key = key_file.read_text().strip() if key_file.exists() else ""
    database = environment.get("FASTSVD_DATABASE_URL") or f"sqlite:///{data_dir / 'fastsvd.db'}"
    return Server(url, key, data_dir, process, log_path, database)


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


BACKENDS = ("embedded", "distributed")


@contextlib.contextmanager
def backend_env(
    kind: str, request: pytest.FixtureRequest, folder: Path
) -> Iterator[dict[str, str]]:
    """Where a server keeps its state, as environment variables: ``embedded`` (SQLite and
    local files) or ``distributed`` (PostgreSQL and an S3-compatible object store)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "embedded":
        with database_url("sqlite", folder) as url:
            yield {"FASTSVD_DATABASE_URL": url}
        return
    store: ObjectStore = request.getfixturevalue("object_store")
    with database_url("postgresql", folder) as url:
        yield {"FASTSVD_DATABASE_URL": url, **store.env(store.new_bucket())}


def wait_done(
    client: httpx.Client, status_url: str, timeout_s: float = CEILING_S
) -> dict[str, object]:
    """Poll a status URL until COMPLETED; returns the final status body."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, object] = client.get(status_url, params={"logs": 1}).json()
        if body["status"] == "COMPLETED":
            return body
        time.sleep(0.05)
    raise AssertionError(f"not completed in {timeout_s} s: {status_url}")


def user_key(server: Server, name: str = "user") -> str:
    """A new key with the user scope, written into the server's database."""
    with server.key_store() as keys:
        key, _info = keys.create(name)
    return key
