"""A real fastsvd server process on loopback, for the service tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running ``fastsvd serve``."""

    url: str
    key: str
    data_dir: Path
    process: subprocess.Popen[str]
    log_path: Path

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


def start_server(tmp: Path, **env: str) -> Server:
    """Start ``fastsvd serve``; wait for /ready (or /health when it runs no worker, or
    when ``_PROBE`` says so)."""
    probe = env.pop("_PROBE", "/health" if env.get("FASTSVD_WORKERS") == "0" else "/ready")
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / "server.log"
    environment = {
        **os.environ,
        "FASTSVD_DATA_DIR": str(tmp / "data"),
        "FASTSVD_PORT": str(port),
        "FASTSVD_RUNNER": "tests.fakes.runner:Runner",
        "FASTSVD_IDLE_POLL_S": "5",
        "PYTHONPATH": str(ROOT),
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
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}{probe}", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError(f"server not ready:\n{log_path.read_text()}")
    match = re.search(r"^\s+(\S+:\S+)$", log_path.read_text(), re.MULTILINE)
    key = match.group(1) if match else ""
    return Server(url, key, tmp / "data", process, log_path)


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server (fake model, one worker) shared by a test module."""
    running = start_server(tmp_path_factory.mktemp("server"))
    try:
        yield running
    finally:
        stop_server(running)


def wait_done(client: httpx.Client, status_url: str, timeout_s: float = 60) -> dict[str, object]:
    """Poll a status URL until COMPLETED; returns the final status body."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, object] = client.get(status_url, params={"logs": 1}).json()
        if body["status"] == "COMPLETED":
            return body
        time.sleep(0.05)
    raise AssertionError(f"not completed in {timeout_s} s: {status_url}")
