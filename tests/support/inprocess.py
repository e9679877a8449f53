"""A fastsvd server in the test's own process: the app driven through its ASGI interface (no
socket, no uvicorn), a worker, the webhook deliverer and the housekeeping in threads, the store
on the backend the test names. It answers as ``fastsvd serve`` does and offers what
``servers.Server`` offers, so protocol and validation tests need not start processes; lifecycle,
topology and fault tests (signals, restarts, outages) still do.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastsvd.api.app import create_app
from fastsvd.endpoints import configured
from fastsvd.serve import housekeeping
from fastsvd.services import Services
from fastsvd.settings import Settings
from fastsvd.store.jobs import Job
from fastsvd.store.keys import KeyStore, Scope
from fastsvd.store.webhooks import WebhookOutbox
from fastsvd.webhooks import Deliverer
from fastsvd.worker import Worker
from tests.support.servers import wait_for

URL = "http://testserver"  # the base URL the app sees (and builds its links from)
# as start_server's: the fake model, and no rate limits for tests that poll hard
TEST_ENV = {
    "FASTSVD_RUNNER": "tests.fakes.runner:Runner",
    "FASTSVD_IDLE_POLL_S": "5",
    "FASTSVD_REQUESTS_PER_S": "0",
    "FASTSVD_SUBMITS_PER_MINUTE": "0",
    "FASTSVD_AUTH_FAILURES_PER_S": "0",
}


@dataclass
class InProcessServer:
    """The app, one worker and the webhook deliverer of ``services``, in this process."""

    services: Services
    app: FastAPI
    key: str  # an admin key, as the first key of a real server
    worker: Worker
    _environ: pytest.MonkeyPatch  # the AWS_* variables of an object store, for boto
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    url = URL

    @property
    def data_dir(self) -> Path:
        return self.services.settings.data_dir

    @property
    def database_url(self) -> str:
        return self.services.db.url

    def client(self, key: str | None = None) -> httpx.Client:
        """A client that sends ``key`` (default: the admin key) to the app."""
        return self.http({"Authorization": f"Key {key or self.key}"})

    def http(self, headers: dict[str, str] | None = None) -> httpx.Client:
        """A client with no key (or ``headers``), for the public routes."""
        return TestClient(self.app, base_url=URL, headers=headers)

    def public(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        """One request with no key, as a browser or a player sends it."""
        with self.http() as http:
            return http.request(method, url, **kwargs)  # type: ignore[arg-type]

    def job(self, request_id: str) -> Job:
        """The job as the store holds it (attempts, lease, timings)."""
        job = self.services.jobs.get(request_id)
        assert job is not None, request_id
        return job

    @contextlib.contextmanager
    def key_store(self) -> Iterator[KeyStore]:
        yield self.services.keys

    def close(self) -> None:
        self.worker.drain()
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self.services.close()
        self._environ.undo()


def start_in_process(folder: Path, **env: str) -> InProcessServer:
    """The app, a worker, the deliverer and the housekeeping on the store ``env`` names
    (``FASTSVD_*`` variables, as ``start_server`` takes them), with ``folder`` as the data
    folder."""
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FASTSVD_")},
        "FASTSVD_DATA_DIR": str(folder / "data"),
        **TEST_ENV,
        **env,
    }
    settings = Settings.from_env(environment)
    environ = pytest.MonkeyPatch()
    for name, value in env.items():
        if not name.startswith("FASTSVD_"):
            environ.setenv(name, value)
    services = Services.from_settings(settings)
    key, _info = services.keys.create("first key", scope=Scope.admin)
    app = create_app(services, configured(settings))
    worker = Worker.build(settings, services=services, name=f"in-process-{folder.name}")
    server = InProcessServer(services, app, key, worker, environ)
    deliverer = Deliverer(WebhookOutbox(services.db), settings, services.signing_keys)
    server._threads = [
        threading.Thread(target=worker.serve, daemon=True),
        threading.Thread(target=deliverer.serve, args=(server._stop,), daemon=True),
        threading.Thread(target=housekeeping, args=(services, server._stop), daemon=True),
    ]
    for thread in server._threads:
        thread.start()
    with server.http() as http:  # as start_server does: ready once the worker is
        wait_for(lambda: http.get("/ready").status_code == 200, "the worker to be ready")
    return server
