"""A webhook receiver on loopback, scripted with the status codes it answers, and the
webhook outbox's rows, which say when nothing more will be sent."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from sqlalchemy import select

from fastsvd.store.db import Database
from fastsvd.store.tables import jobs
from tests.support.servers import CEILING_S, wait_for


class HasDatabase(Protocol):
    """A server (a process, or in this process) whose database the test may read."""

    @property
    def database_url(self) -> str: ...


class Receiver:
    """A webhook receiver on loopback that answers from a script of status codes."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.script: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append((self.path, dict(self.headers), body))
                code = receiver.script.pop(0) if receiver.script else 200
                self.send_response(code)
                if code in (301, 302, 307):
                    self.send_header("location", f"{receiver.url}/redirected")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, count: int, timeout_s: float = CEILING_S) -> None:
        wait_for(lambda: len(self.received) >= count, f"{count} webhooks", timeout_s)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def webhook_row(server: HasDatabase, request_id: str) -> dict[str, Any]:
    """The request's webhook in the outbox: its state, tries and last error."""
    db = Database(server.database_url)
    try:
        with db.read() as conn:
            row = conn.execute(
                select(jobs.c.webhook_state, jobs.c.webhook_attempts, jobs.c.webhook_error).where(
                    jobs.c.id == request_id
                )
            ).one()
    finally:
        db.dispose()
    return dict(row._mapping)


def settled(server: HasDatabase, request_id: str, state: str, *, attempts: int) -> None:
    """Wait until the request's webhook is ``state`` in the outbox (delivered, or given up),
    after which no deliverer sends it again; then check that it took ``attempts`` tries (every
    try is counted, a duplicate one too)."""
    wait_for(
        lambda: webhook_row(server, request_id)["webhook_state"] == state,
        f"the webhook to be {state}",
    )
    assert webhook_row(server, request_id)["webhook_attempts"] == attempts
