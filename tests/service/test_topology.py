"""Scale-out for real: two API processes and three worker processes, on one PostgreSQL and one
S3-compatible object store. The workers run on their own, attached to nothing but the database
and the object store, each with a data folder of its own (as on separate hosts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.objectstore import ObjectStore
from tests.support.bodies import SIZE_64, T2V_PATH
from tests.support.receivers import Receiver, settled
from tests.support.servers import (
    PYTHONPATH,
    ROOT,
    Server,
    backend_env,
    start_server,
    stop_server,
    wait_done,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.process]


def start_worker(folder: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``fastsvd worker`` alone, logging JSON lines to ``folder/worker.log``."""
    folder.mkdir(parents=True)
    with (folder / "worker.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "fastsvd.cli", "worker"],
            cwd=ROOT,
            env={
                **os.environ,
                **env,
                "FASTSVD_DATA_DIR": str(folder / "data"),
                "FASTSVD_RUNNER": "tests.fakes.runner:Runner",
                "FASTSVD_LOG_FORMAT": "json",
                "FASTSVD_IDLE_POLL_S": "30",  # wake-ups must come from NOTIFY, not polling
                "PYTHONPATH": PYTHONPATH,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def worker_events(folders: list[Path], message: str) -> Counter[tuple[int, str]]:
    """(worker index, request id) of every ``message`` line in the workers' logs."""
    seen: Counter[tuple[int, str]] = Counter()
    for index, folder in enumerate(folders):
        for line in (folder / "worker.log").read_text().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry["msg"] == message:
                    seen[(index, entry["request_id"])] += 1
    return seen


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[list[Server], list[Path], dict[str, str]]]:
    """Two APIs (no workers of their own) on PostgreSQL + S3; workers are started by the test."""
    with backend_env("distributed", request, tmp_path / "db") as env:
        env = {**env, "FASTSVD_ALLOW_PRIVATE_URLS": "1"}
        apis = [start_server(tmp_path / "api-a", **env, FASTSVD_WORKERS="0")]
        apis.append(start_server(tmp_path / "api-b", **env, FASTSVD_WORKERS="0"))
        folders = [tmp_path / f"worker-{i}" for i in range(3)]
        try:
            yield apis, folders, env
        finally:
            for api in apis:
                stop_server(api)


def test_two_apis_three_workers_every_request_completes_exactly_once(
    cluster: tuple[list[Server], list[Path], dict[str, str]],
    receiver: Receiver,
    object_store: ObjectStore,
) -> None:
    apis, folders, env = cluster
    key = apis[0].key  # the first API created it; the second shares the database
    clients = [api.client(key) for api in apis]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        # Nine requests, alternating between the APIs, queued before any worker exists.
        subs: list[dict[str, Any]] = []
        for i in range(9):
            answer = clients[i % 2].post(
                T2V_PATH,
                json={"prompt": f"slow {i}", **SIZE_64, "steps": 1},
                params={"fal_webhook": f"{receiver.url}/hook"},
            )
            assert answer.status_code == 200
            subs.append(answer.json())
        for position, sub in enumerate(subs):
            seen = [c.get(sub["status_url"]).json()["queue_position"] for c in clients]
            assert seen == [position, position]  # both APIs agree

        workers = [start_worker(folder, env) for folder in folders]
        for i, sub in enumerate(subs):
            done = wait_done(clients[(i + 1) % 2], sub["status_url"])
            assert done.get("error") is None, done
            result = clients[i % 2].get(sub["response_url"]).json()
            video = httpx.get(result["video"]["url"], timeout=30)  # served from the object store
            assert video.status_code == 200
            assert len(video.content) == result["video"]["file_size"]
            assert apis[0].job(sub["request_id"]).attempts == 1

        ids = {sub["request_id"] for sub in subs}
        started = worker_events(folders, "job started")
        completed = worker_events(folders, "job completed")
        assert sorted(r for _w, r in started) == sorted(ids)  # each started once, in all
        assert sorted(r for _w, r in completed) == sorted(ids)
        assert set(completed.values()) == {1}
        assert len({w for w, _r in completed}) >= 2  # the work was shared
        receiver.wait(len(ids))
        for request_id in ids:  # both APIs run a webhook deliverer: no request may get two
            settled(apis[0], request_id, "delivered", attempts=1)
        assert sorted(json.loads(b)["request_id"] for _p, _h, b in receiver.received) == sorted(ids)
        # one output and one first-frame picture each, in the bucket; nothing on the APIs' disks
        bucket, prefix = env["FASTSVD_STORAGE_URL"].removeprefix("s3://").split("/", 1)
        listed = object_store.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
        assert listed["KeyCount"] == 2 * len(ids)
        assert not any(p.is_file() for api in apis for p in (api.data_dir / "files").rglob("*"))
    finally:
        for client in clients:
            client.close()
        for process in workers:
            process.terminate()
            process.wait(30)


def test_a_cancel_sent_to_one_api_stops_a_job_on_a_worker_attached_to_nothing_but_the_database(
    cluster: tuple[list[Server], list[Path], dict[str, str]],
) -> None:
    apis, folders, env = cluster
    key = apis[0].key
    worker = start_worker(folders[0], env)
    try:
        with apis[0].client(key) as a, apis[1].client(key) as b:
            sub = a.post(T2V_PATH, json={"prompt": "slow", **SIZE_64, "steps": 30}).json()  # 15 s
            wait_for(
                lambda: b.get(sub["status_url"]).json()["status"] == "IN_PROGRESS",
                "the job to start",
            )
            assert b.put(sub["cancel_url"]).status_code == 202
            done = wait_done(a, sub["status_url"])
            assert done["error_type"] == "cancelled"
            steps_run = [m for m in done["logs"] if "video: step" in m["message"]]  # type: ignore[attr-defined]
            assert len(steps_run) < 30  # stopped at a step boundary, not run to the end
    finally:
        worker.terminate()
        worker.wait(30)
