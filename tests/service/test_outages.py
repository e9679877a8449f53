"""Outages of the service's dependencies, on real links: every accepted request completes once.

Each test runs real processes in a network namespace of its own (``tests.netfault``), takes a
dependency away for a few seconds (the object store killed, a disk filled, a database link cut
by a firewall rule that drops packets silently) and brings it back. It counts lost, duplicated
and failed requests and 5xx answers (the 503s that an outage earns aside), and asserts all zero.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.databases import database_url
from tests.netfault import (
    Namespace,
    Relay,
    fill,
    mount_tmpfs,
    relayed_url,
    unavailable,
    unmount,
)
from tests.objectstore import free_port, s3_server
from tests.service.test_topology import start_worker
from tests.support.bodies import SIZE_64, T2V_PATH
from tests.support.servers import Server, start_server, stop_server, wait_for

# How long the object store stays away (plus its restart); FASTSVD_TEST_OUTAGE_S=10 for longer
OUTAGE_S = float(os.environ.get("FASTSVD_TEST_OUTAGE_S", "2"))
LEASE = {"FASTSVD_LEASE_S": "2"}

pytestmark = [
    pytest.mark.process,
    pytest.mark.slow,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    made = Namespace()
    try:
        yield made
    finally:
        made.close()


@dataclass
class Tally:
    """Every answer the clients got, and the requests they submitted."""

    statuses: Counter[int] = field(default_factory=Counter)
    request_ids: list[str] = field(default_factory=list)

    def get(self, client: httpx.Client, url: str) -> httpx.Response:
        answer = client.get(url)
        self.statuses[answer.status_code] += 1
        if answer.status_code == 503:
            assert answer.headers.get("retry-after"), answer.text
        return answer

    def submit(self, client: httpx.Client, prompt: str, steps: int) -> dict[str, Any]:
        answer = client.post(T2V_PATH, json={"prompt": prompt, **SIZE_64, "steps": steps})
        self.statuses[answer.status_code] += 1
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        self.request_ids.append(body["request_id"])
        return body

    def poll(self, client: httpx.Client, server: Server) -> dict[str, str]:
        """Each request's status now (the ones that answered)."""
        seen = {}
        for request_id in self.request_ids:
            url = f"{server.url}/fal-ai/fast-svd/requests/{request_id}/status"
            answer = self.get(client, url)
            if answer.status_code in (200, 202):  # 202 until it is done
                seen[request_id] = answer.json()["status"]
        return seen

    def errors(self) -> dict[int, int]:
        """The 5xx answers other than 503."""
        return {code: n for code, n in self.statuses.items() if code >= 500 and code != 503}


def videos(tally: Tally, client: httpx.Client, server: Server) -> dict[str, str]:
    """Each request's outcome: "video" when its result holds a video that can be downloaded."""
    outcome = {}
    for request_id in tally.request_ids:
        result = tally.get(client, f"{server.url}/fal-ai/fast-svd/requests/{request_id}")
        if result.status_code != 200:
            outcome[request_id] = f"HTTP {result.status_code}: {result.text[:200]}"
            continue
        video = tally.get(client, result.json()["video"]["url"])
        ok = video.status_code == 200 and video.content[4:8] == b"ftyp"
        outcome[request_id] = "video" if ok else f"video HTTP {video.status_code}"
    return outcome


def log_entries(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def completions(paths: list[Path]) -> Counter[str]:
    """How many times each request was completed, by every process logging to ``paths``."""
    return Counter(
        entry["request_id"]
        for path in paths
        for entry in log_entries(path)
        if entry["msg"] == "job completed"
    )


def assert_quiet(path: Path) -> None:
    """No traceback: every outage here is one the code handles."""
    text = path.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert '"exc":' not in text, text[-3000:]


def claims_while_down(path: Path) -> list[str]:
    """The jobs a worker started between its warnings that an outage began and ended."""
    down: set[int] = set()
    claimed = []
    for entry in log_entries(path):
        if entry["msg"].endswith("; waiting for it"):
            down.add(entry["pid"])
        elif entry["msg"].startswith("back after"):
            down.discard(entry["pid"])
        elif entry["msg"] == "job started" and entry["pid"] in down:
            claimed.append(entry["request_id"])
    return claimed


def all_completed(tally: Tally, client: httpx.Client, server: Server) -> bool:
    seen = tally.poll(client, server)  # a failed request is COMPLETED too (see ``videos``)
    return len(seen) == len(tally.request_ids) and set(seen.values()) == {"COMPLETED"}


def test_object_store_killed_and_restarted_mid_run(tmp_path: Path, namespace: Namespace) -> None:
    """Jobs running and queued when the S3 server dies all complete, each with its video, once
    it is back: the preview is skipped, the video waits, no queued job is claimed meanwhile."""
    tally = Tally()
    with namespace.inside(), contextlib.ExitStack() as first_store:
        port = free_port()
        store = first_store.enter_context(s3_server(port))
        bucket = store.new_bucket()
        server = start_server(
            tmp_path,
            **store.env(bucket),
            FASTSVD_WORKERS="2",
            FASTSVD_LOG_FORMAT="json",
            FAKE_STEP_S="0.05",
        )
        client = server.client()
        try:
            for i in range(4):  # two running, two queued
                tally.submit(client, f"a lighthouse {i}", steps=6)
            wait_for(lambda: "IN_PROGRESS" in tally.poll(client, server).values(), "a job running")
            first_store.close()  # the S3 server is killed, its objects with it
            deadline = time.monotonic() + OUTAGE_S
            while time.monotonic() < deadline:  # the service carries on answering
                tally.poll(client, server)
                time.sleep(0.2)
            with s3_server(port) as store:
                store.client().create_bucket(Bucket=bucket)
                wait_for(lambda: all_completed(tally, client, server), "every request")
                outcome = videos(tally, client, server)
        finally:
            client.close()
            stop_server(server)

    assert outcome == dict.fromkeys(tally.request_ids, "video"), outcome
    done = completions([server.log_path])
    assert done == Counter(tally.request_ids), done  # none lost, none twice
    assert tally.errors() == {}, tally.statuses
    assert_quiet(server.log_path)
    assert claims_while_down(server.log_path) == []
    warnings = [e["msg"] for e in log_entries(server.log_path) if e["level"] == "WARNING"]
    assert any("the object store" in w and "waiting for it" in w for w in warnings), warnings
    assert any(w.startswith("back after") for w in warnings), warnings


def test_a_full_disk_under_the_local_store_is_waited_out(tmp_path: Path) -> None:
    """The files folder on a small tmpfs, filled up: jobs wait, and complete once there is room."""
    files = tmp_path / "files"
    mount_tmpfs(files, size_kib=256)
    tally = Tally()
    try:
        server = start_server(
            tmp_path / "server",
            FASTSVD_STORAGE_URL=f"file://{files}",
            FASTSVD_LOG_FORMAT="json",
        )
        client = server.client()
        try:
            filler = files / "filler"
            fill(filler)
            for i in range(3):
                tally.submit(client, f"a harbour {i}", steps=2)
            wait_for(
                lambda: (
                    "its disk is full" in server.log()
                    or "COMPLETED" in tally.poll(client, server).values()
                ),
                "a worker to meet the full disk",
            )
            assert "COMPLETED" not in tally.poll(client, server).values()  # none ended on it
            filler.unlink()
            wait_for(lambda: all_completed(tally, client, server), "every request")
            outcome = videos(tally, client, server)
        finally:
            client.close()
            stop_server(server)
    finally:
        unmount(files)

    assert outcome == dict.fromkeys(tally.request_ids, "video"), outcome
    assert completions([server.log_path]) == Counter(tally.request_ids)
    assert tally.errors() == {}, tally.statuses
    assert_quiet(server.log_path)


def test_database_cut_off_from_the_api_then_from_a_worker_past_its_lease(
    tmp_path: Path, namespace: Namespace
) -> None:
    """PostgreSQL links cut by a rule that drops packets: the API answers 503 within seconds
    while cut off; a worker cut off past its lease loses its job to the other worker, the job
    completes once, and the cut-off worker's job thread is free soon after."""
    with database_url("postgresql", tmp_path) as url:
        upstream = ("127.0.0.1", int(url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]))
        relays = {name: Relay(namespace, upstream) for name in ("api", "w0", "w1")}
        shared = {"FASTSVD_STORAGE_URL": f"file://{tmp_path / 'files'}", **LEASE}
        folders = [tmp_path / "w0", tmp_path / "w1"]
        tally = Tally()
        workers = []
        try:
            with namespace.inside():
                server = start_server(
                    tmp_path / "api",
                    FASTSVD_DATABASE_URL=relayed_url(url, relays["api"].port),
                    FASTSVD_WORKERS="0",
                    FASTSVD_LOG_FORMAT="json",
                    **shared,
                )
                for name, folder in zip(("w0", "w1"), folders, strict=True):
                    env = {"FASTSVD_DATABASE_URL": relayed_url(url, relays[name].port), **shared}
                    workers.append(start_worker(folder, env))
                server.database_url = url  # for the test's own reads, from outside
                client = server.client()
            try:
                # 1. The API cut off: 503s, each within a few seconds, then answers again.
                with namespace.inside():
                    first = tally.submit(client, "a lighthouse", steps=1)
                    wait_for(lambda: all_completed(tally, client, server), "the first request")
                    namespace.cut(relays["api"].port)
                    slowest_s = 0.0
                    for _ in range(2):
                        started = time.monotonic()
                        answer = tally.get(client, first["status_url"])
                        slowest_s = max(slowest_s, time.monotonic() - started)
                        assert answer.status_code == 503, answer.text
                    namespace.mend(relays["api"].port)
                    wait_for(lambda: all_completed(tally, client, server), "the API back")
                assert slowest_s < 6.0, f"a 503 took {slowest_s:.1f} s"

                # 2. A worker cut off past its lease, while it runs a job.
                with namespace.inside():
                    sub = tally.submit(client, "slow waves", steps=4)  # 0.5 s a step
                wait_for(lambda: server.lease_owner(sub["request_id"]), "a worker")
                owner = server.lease_owner(sub["request_id"])
                index = next(i for i, w in enumerate(workers) if str(owner).endswith(f"-{w.pid}"))
                namespace.cut(relays[f"w{index}"].port)
                wait_for(
                    lambda: server.lease_owner(sub["request_id"]) not in (None, owner),
                    "the other worker to take the job",
                )
                cut_log = folders[index] / "worker.log"
                wait_for(lambda: "lease lost" in cut_log.read_text(), "the job thread freed")
                namespace.mend(relays[f"w{index}"].port)
                with namespace.inside():
                    wait_for(lambda: all_completed(tally, client, server), "every request")
                    outcome = videos(tally, client, server)
            finally:
                with namespace.inside():
                    client.close()
                stop_server(server)
                for worker in workers:
                    worker.terminate()
                    worker.wait(30)
        finally:
            for relay in relays.values():
                relay.close()

    assert outcome == dict.fromkeys(tally.request_ids, "video"), outcome
    done = completions([folder / "worker.log" for folder in folders])
    assert done == Counter(tally.request_ids), done
    assert tally.errors() == {}, tally.statuses
    for path in [server.log_path, *(folder / "worker.log" for folder in folders)]:
        assert_quiet(path)
