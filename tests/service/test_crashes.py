"""Crash safety on one machine: answered submits survive kill -9 of any fastsvd process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.service.conftest import Server, start_server, stop_server, wait_done

T2V = "/fal-ai/fast-svd/text-to-video"
SMALL = {"video_size": {"width": 64, "height": 64}}
FAST_LEASE = {"FASTSVD_LEASE_S": "1.5", "FASTSVD_MAX_ATTEMPTS": "2"}

pytestmark = pytest.mark.slow


def wait_for(predicate: object, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_worker_killed_mid_job_the_job_completes_on_a_new_worker(tmp_path: Path) -> None:
    server = start_server(tmp_path, **FAST_LEASE)
    try:
        with server.client() as client:
            sub = client.post(T2V, json={"prompt": "slow", **SMALL, "steps": 4}).json()
            wait_for(lambda: client.get(sub["status_url"]).json()["status"] == "IN_PROGRESS")
            (victim,) = server.worker_pids()
            os.kill(victim, signal.SIGKILL)
            done = wait_done(client, sub["status_url"], timeout_s=60)
            assert done.get("error") is None, done
            assert client.get(sub["response_url"]).status_code == 200
            assert victim not in server.worker_pids()
    finally:
        stop_server(server)


def test_a_job_that_kills_its_worker_every_time_ends_after_max_attempts(tmp_path: Path) -> None:
    server = start_server(tmp_path, **FAST_LEASE)
    try:
        with server.client() as client:
            poison = client.post(T2V, json={"prompt": "crash", **SMALL}).json()
            done = wait_done(client, poison["status_url"], timeout_s=90)
            assert done["error_type"] == "runner_disconnected"
            # the service goes on: the next job runs on a restarted worker
            healthy = client.post(T2V, json={"prompt": "fine", **SMALL, "steps": 1}).json()
            assert wait_done(client, healthy["status_url"], timeout_s=60).get("error") is None
    finally:
        stop_server(server)


def test_api_killed_after_submit_the_request_completes_after_restart(tmp_path: Path) -> None:
    server = start_server(tmp_path, FASTSVD_WORKERS="0")  # accept, but run nothing yet
    with server.client() as client:
        sub = client.post(T2V, json={"prompt": "kept", **SMALL, "steps": 1}).json()
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()

    restarted = start_server(tmp_path)
    try:
        with restarted.client(server.key) as client:
            done = wait_done(
                client,
                f"{restarted.url}{T2V.rsplit('/', 1)[0]}/requests/{sub['request_id']}/status",
            )
            assert done.get("error") is None
    finally:
        stop_server(restarted)


def test_sigterm_drains_the_running_job(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    with server.client() as client:
        sub = client.post(T2V, json={"prompt": "slow", **SMALL, "steps": 3}).json()
        wait_for(lambda: client.get(sub["status_url"]).json()["status"] == "IN_PROGRESS")
    stop_server(server)  # SIGTERM to the whole group: the worker finishes its job first
    assert server.process.returncode == 0
    restarted: Server = start_server(tmp_path, FASTSVD_WORKERS="0")
    try:
        with restarted.client(server.key) as client:
            status = client.get(
                f"{restarted.url}/fal-ai/fast-svd/requests/{sub['request_id']}/status"
            ).json()
            assert status["status"] == "COMPLETED"
            assert status.get("error") is None
    finally:
        stop_server(restarted)
