"""The reliability suite: processes killed, stalled and restarted, the database restarted,
cancels and duplicates, on both backends (embedded: SQLite and local files; distributed:
PostgreSQL and an S3-compatible object store).

Each test names its scenario (R-numbers as in the deployment guide, docs/deploy.md) and checks
that every accepted request reaches exactly one final state, with one result and one webhook.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.bodies import REQUESTS_PATH, SIZE_64, T2V_PATH
from tests.support.receivers import Receiver
from tests.support.servers import (
    Server,
    backend_env,
    log_time,
    start_server,
    stop_server,
    wait_done,
    wait_for,
)

FAST_LEASE = {"FASTSVD_LEASE_S": "1.5", "FASTSVD_MAX_ATTEMPTS": "2"}
# Idle workers that never poll within a test: a job must reach one through a wake-up or the
# reaping rounds, not through the safety-net poll.
NO_IDLE_POLL = {"FASTSVD_IDLE_POLL_S": "600"}
HOOKS = {"FASTSVD_ALLOW_PRIVATE_URLS": "1"}

pytestmark = [pytest.mark.slow, pytest.mark.process]


def submit(
    client: httpx.Client,
    prompt: str,
    steps: int = 1,
    webhook: Receiver | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    params = {"fal_webhook": f"{webhook.url}/hook"} if webhook else None
    answer = client.post(
        T2V_PATH,
        json={"prompt": prompt, **SIZE_64, "steps": steps},
        params=params,
        headers=headers,
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def status_url(server: Server, request_id: str) -> str:
    return f"{server.url}{REQUESTS_PATH}/{request_id}/status"


def running(client: httpx.Client, sub: dict[str, Any]) -> bool:
    return bool(client.get(sub["status_url"]).json()["status"] == "IN_PROGRESS")


def one_webhook_each(receiver: Receiver, request_ids: list[str], settle_s: float = 1.0) -> None:
    """Exactly one webhook per request: wait for them, then a while for any duplicate."""
    receiver.wait(len(request_ids))
    time.sleep(settle_s)
    import json

    got = [json.loads(body)["request_id"] for _path, _headers, body in receiver.received]
    assert sorted(got) == sorted(request_ids)


def test_r1_worker_killed_mid_job(
    tmp_path: Path, fresh_backend: dict[str, str], receiver: Receiver
) -> None:
    """R1: kill -9 of the worker half-way through: the job runs again on the restarted worker
    (attempt 2) and completes once, with one result and one webhook."""
    server = start_server(tmp_path, **fresh_backend, **FAST_LEASE, **HOOKS)
    try:
        with server.client() as client:
            sub = submit(client, "slow", steps=4, webhook=receiver)
            wait_for(lambda: running(client, sub), "the job to start")
            (victim,) = server.worker_pids()
            os.kill(victim, signal.SIGKILL)
            done = wait_done(client, sub["status_url"])
            assert done.get("error") is None, done
            assert client.get(sub["response_url"]).status_code == 200
            assert server.job(sub["request_id"]).attempts == 2
            one_webhook_each(receiver, [sub["request_id"]])
    finally:
        stop_server(server)


def test_r2_api_killed_right_after_a_submit_is_answered(
    tmp_path: Path, fresh_backend: dict[str, str]
) -> None:
    """R2: the whole service is killed (-9) right after answering a submit; after a restart
    the request is there and completes."""
    server = start_server(tmp_path, **fresh_backend, FASTSVD_WORKERS="0")
    with server.client() as client:
        sub = submit(client, "kept")
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    restarted = start_server(tmp_path, **fresh_backend)
    try:
        with restarted.client(server.key) as client:
            done = wait_done(client, status_url(restarted, sub["request_id"]))
            assert done.get("error") is None
    finally:
        stop_server(restarted)


def test_r4_r13_a_stalled_worker_is_fenced_off(
    tmp_path: Path, fresh_backend: dict[str, str], receiver: Receiver
) -> None:
    """R4 and R13: a worker stopped (SIGSTOP) past its lease loses the job to another worker;
    when it continues (SIGCONT), both have held the job, and only the holder of the newer lease
    writes: one result, one webhook, attempt 2.

    The other worker never polls (``NO_IDLE_POLL``): it must find the expired lease in its
    reaping rounds, or be woken by the reaper of the API process."""
    server = start_server(
        tmp_path, **fresh_backend, **FAST_LEASE, **HOOKS, **NO_IDLE_POLL, FASTSVD_WORKERS="2"
    )
    try:
        with server.client() as client:
            sub = submit(client, "slow", steps=6, webhook=receiver)
            wait_for(lambda: server.lease_owner(sub["request_id"]) is not None, "a claim")
            owner = server.lease_owner(sub["request_id"])
            assert owner is not None
            zombie = int(owner.rsplit("-", 1)[1])
            server.stop_between_writes(zombie, sub["request_id"])
            try:
                wait_for(
                    lambda: server.job(sub["request_id"]).attempts == 2,
                    "the job to be handed on",
                )
            finally:
                os.kill(zombie, signal.SIGCONT)
            done = wait_done(client, sub["status_url"])
            assert done.get("error") is None, done
            assert server.job(sub["request_id"]).attempts == 2
            one_webhook_each(receiver, [sub["request_id"]], settle_s=2.0)
        wait_for(lambda: "lease lost" in server.log(), "the zombie to notice")
    finally:
        stop_server(server)


def test_r1_r2_after_the_whole_service_is_killed_its_jobs_restart_at_once(
    tmp_path: Path, fresh_backend: dict[str, str]
) -> None:
    """R1 and R2 together: ``kill -9`` of the whole embedded server (API and workers) mid-job;
    on restart the new worker knows the old holder is gone (same host, its pid gone) and runs
    the job again at once (attempt 2) instead of waiting out the lease.

    The lease is 60 s and idle workers never poll, so the job cannot restart through either:
    it must start again before its old lease could have expired. Measured too: from the new
    worker's "ready" log line to the job's new start (the target is under 2 s; it is one claim)."""
    slow_recovery = {"FASTSVD_LEASE_S": "60", **NO_IDLE_POLL}
    server = start_server(tmp_path, **fresh_backend, **slow_recovery)
    with server.client() as client:
        sub = submit(client, "slow", steps=3)
        wait_for(lambda: running(client, sub), "the job to start")
    first = server.job(sub["request_id"])
    assert (first.attempts, first.started_at is not None) == (1, True)
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    restarted = start_server(tmp_path, **fresh_backend, **slow_recovery)
    try:
        with restarted.client(server.key) as client:
            done = wait_done(client, status_url(restarted, sub["request_id"]))
            assert done.get("error") is None, done
        again = restarted.job(sub["request_id"])
        assert again.attempts == 2
        assert first.started_at is not None
        assert again.started_at is not None
        assert again.started_at < first.started_at + 60  # before the old lease could expire
        ready = [line for line in restarted.log_lines("fastsvd.worker[") if "ready" in line]
        assert ready, restarted.log()
        ready_to_start_s = again.started_at - log_time(ready[0])
        print(f"from the worker's ready line to the job's restart: {ready_to_start_s:.3f} s")
        assert ready_to_start_s < 2.0, f"{ready_to_start_s:.3f} s from ready to the restart"
    finally:
        stop_server(restarted)


def test_r5_a_long_healthy_job_is_never_taken_away(
    tmp_path: Path, fresh_backend: dict[str, str]
) -> None:
    """R5: a job lasting several leases, with a live heartbeat, runs once."""
    server = start_server(tmp_path, **fresh_backend, **FAST_LEASE, FASTSVD_WORKERS="2")
    try:
        with server.client() as client:
            sub = submit(client, "slow", steps=10)  # 5 s: more than three 1.5 s leases
            done = wait_done(client, sub["status_url"])
            assert done.get("error") is None
            assert server.job(sub["request_id"]).attempts == 1
    finally:
        stop_server(server)


def test_r6_sigterm_drains_the_running_job(tmp_path: Path, fresh_backend: dict[str, str]) -> None:
    """R6: SIGTERM during a job: the worker finishes it, queued jobs stay queued, exit 0."""
    server = start_server(tmp_path, **fresh_backend)
    with server.client() as client:
        sub = submit(client, "slow", steps=3)
        wait_for(lambda: running(client, sub), "the job to start")
        waiting = submit(client, "next")
    stop_server(server)  # SIGTERM to the whole group: the worker finishes its job first
    assert server.process.returncode == 0
    restarted = start_server(tmp_path, **fresh_backend, FASTSVD_WORKERS="0")
    try:
        with restarted.client(server.key) as client:
            status = client.get(status_url(restarted, sub["request_id"])).json()
            assert (status["status"], status.get("error")) == ("COMPLETED", None)
            left = client.get(status_url(restarted, waiting["request_id"])).json()
            assert left["status"] == "IN_QUEUE"
    finally:
        stop_server(restarted)


def test_r7_a_poison_job_is_capped(tmp_path: Path, fresh_backend: dict[str, str]) -> None:
    """R7: a job that kills its worker every time ends after max attempts; the restarted
    worker serves the next job."""
    server = start_server(
        tmp_path,
        **fresh_backend,
        **FAST_LEASE,
        FASTSVD_RUNNER="tests.fakes.runner:Crashing",
        FAKE_CRASHES=FAST_LEASE["FASTSVD_MAX_ATTEMPTS"],  # every attempt of the first job
    )
    try:
        with server.client() as client:
            poison = submit(client, "a rocket")
            done = wait_done(client, poison["status_url"])
            assert done["error_type"] == "runner_disconnected"
            assert server.job(poison["request_id"]).attempts == 2
            healthy = submit(client, "fine")
            assert wait_done(client, healthy["status_url"]).get("error") is None
    finally:
        stop_server(server)


def test_r9_r11_a_cancelled_queued_job_never_runs_even_after_a_restart(
    tmp_path: Path, fresh_backend: dict[str, str], receiver: Receiver
) -> None:
    """R9 and R11: a queued job cancelled, then everything restarted with workers: it stays
    cancelled, never starts, and gets one webhook."""
    server = start_server(tmp_path, **fresh_backend, **HOOKS, FASTSVD_WORKERS="0")
    with server.client() as client:
        sub = submit(client, "never", webhook=receiver)
        assert client.put(sub["cancel_url"]).json() == {"status": "CANCELLATION_REQUESTED"}
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    restarted = start_server(tmp_path, **fresh_backend, **HOOKS)
    try:
        with restarted.client(server.key) as client:
            other = submit(client, "runs")  # the worker is up and taking jobs
            wait_done(client, other["status_url"])
            status = client.get(status_url(restarted, sub["request_id"])).json()
            assert status["status"] == "COMPLETED"
            assert status["error_type"] == "cancelled"
            assert restarted.job(sub["request_id"]).started_at is None
        one_webhook_each(receiver, [sub["request_id"]])
    finally:
        stop_server(restarted)


def test_r10_cancel_a_running_job(
    tmp_path: Path, fresh_backend: dict[str, str], receiver: Receiver
) -> None:
    """R10: a running job stops at its next step; repeated cancels are harmless; a cancel after
    the end answers ALREADY_COMPLETED; one webhook."""
    server = start_server(tmp_path, **fresh_backend, **HOOKS)
    try:
        with server.client() as client:
            sub = submit(client, "slow", steps=20, webhook=receiver)  # 10 s if not cancelled
            wait_for(lambda: running(client, sub), "the job to start")
            assert client.put(sub["cancel_url"]).status_code == 202
            assert client.put(sub["cancel_url"]).status_code in (202, 400)
            done = wait_done(client, sub["status_url"])
            assert done["error_type"] == "cancelled"
            steps_run = [m for m in done["logs"] if "video: step" in m["message"]]  # type: ignore[attr-defined]
            assert len(steps_run) < 20  # stopped at a step boundary, not run to the end
            again = client.put(sub["cancel_url"])
            assert (again.status_code, again.json()["status"]) == (400, "ALREADY_COMPLETED")
            one_webhook_each(receiver, [sub["request_id"]])
    finally:
        stop_server(server)


def test_r14_idempotent_submit(tmp_path: Path, fresh_backend: dict[str, str]) -> None:
    """R14: the same Idempotency-Key twice is one job; the second answer names it."""
    server = start_server(tmp_path, **fresh_backend)
    try:
        with server.client() as client:
            key = {"Idempotency-Key": "order-42"}
            first = submit(client, "once", headers=key)
            second = submit(client, "once", headers=key)
            assert second["request_id"] == first["request_id"]
            wait_done(client, first["status_url"])
            third = submit(client, "once", headers=key)  # even after it finished
            assert third["request_id"] == first["request_id"]
            assert server.job(first["request_id"]).attempts == 1
    finally:
        stop_server(server)


def test_r20_backpressure(tmp_path: Path, fresh_backend: dict[str, str]) -> None:
    """R20: beyond the per-key cap on unfinished requests a submit gets 429 with Retry-After;
    other keys are not affected; every accepted request completes."""
    caps = {"FASTSVD_MAX_ACTIVE_PER_KEY": "3", "FASTSVD_MAX_QUEUED": "5"}
    server = start_server(tmp_path, **fresh_backend, **caps, FASTSVD_WORKERS="0")
    with server.key_store() as keys:
        other_key, _ = keys.create("other")
        third_key, _ = keys.create("third")
    with server.client() as client, server.client(other_key) as other:
        accepted = [(server.key, submit(client, f"job {i}")) for i in range(3)]
        refused = client.post(T2V_PATH, json={"prompt": "one too many", **SIZE_64})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0
        assert "limit" in refused.json()["detail"]
        accepted += [(other_key, submit(other, f"other {i}")) for i in range(2)]
    with server.client(third_key) as third:
        full = third.post(T2V_PATH, json={"prompt": "queue full", **SIZE_64})
        assert full.status_code == 429
        assert "queue is full" in full.json()["detail"]
    stop_server(server)
    restarted = start_server(tmp_path, **fresh_backend, **caps)
    try:
        for key, sub in accepted:
            with restarted.client(key) as client:
                done = wait_done(client, status_url(restarted, sub["request_id"]))
                assert done.get("error") is None
    finally:
        stop_server(restarted)


@pytest.fixture
def postgres_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The distributed backend only: restarting a database server is a PostgreSQL scenario."""
    with backend_env("distributed", request, tmp_path / "db") as env:
        yield env


def postgres(action: str) -> None:
    """Stop or start this machine's PostgreSQL server."""
    version = os.listdir("/etc/postgresql")[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, "-m", "fast"]
        if action == "stop"
        else ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        timeout=60,
    )


def test_r15_database_restart_mid_run(
    tmp_path: Path, postgres_backend: dict[str, str], receiver: Receiver
) -> None:
    """R15: PostgreSQL stops while a job runs and another waits: the API answers 503 with
    Retry-After (never 500), the worker keeps its job and reconnects; both complete once."""
    server = start_server(tmp_path, **postgres_backend, **HOOKS, FASTSVD_LEASE_S="10")
    try:
        with server.client() as client:
            sub = submit(client, "slow", steps=6, webhook=receiver)  # 3 s
            wait_for(lambda: running(client, sub), "the job to start")
            waiting = submit(client, "after the restart", webhook=receiver)
            postgres("stop")
            try:
                time.sleep(1.0)
                down = client.get(sub["status_url"])
                assert down.status_code == 503, down.text
                assert int(down.headers["retry-after"]) > 0
                refused = client.post(T2V_PATH, json={"prompt": "while down", **SIZE_64})
                assert refused.status_code == 503
            finally:
                postgres("start")
            for request in (sub, waiting):
                done = wait_done(client, request["status_url"])
                assert done.get("error") is None, done
                assert server.job(request["request_id"]).attempts == 1
            one_webhook_each(receiver, [sub["request_id"], waiting["request_id"]])
            assert server.worker_pids()  # no process gave up
    finally:
        stop_server(server)
