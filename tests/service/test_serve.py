"""fastsvd serve and keys as an operator uses them: auth off, key management, retention."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import httpx
import pytest

from fastsvd.cli import main
from fastsvd.endpoints import ENDPOINTS
from fastsvd.serve import FIRST_KEY_FILE, child_env
from fastsvd.settings import Settings
from tests.databases import postgres_database
from tests.support.bodies import T2V_PATH
from tests.support.servers import ROOT, start_server, stop_server, wait_done, wait_for

pytestmark = pytest.mark.process  # starts server processes


def fastsvd(
    *args: str, data_dir: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FASTSVD_")}
    if data_dir is not None:
        base["FASTSVD_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "fastsvd.cli", *args],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_auth_can_be_off_on_loopback_only(tmp_path: Path) -> None:
    refused = fastsvd("serve", "--no-auth", "--host", "0.0.0.0", data_dir=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: auth can only be turned off on a loopback address, not on 0.0.0.0"
    )
    server = start_server(tmp_path, FASTSVD_AUTH="0")
    try:
        assert not (server.data_dir / FIRST_KEY_FILE).exists()
        answer = httpx.post(f"{server.url}{T2V_PATH}", json={"prompt": "a", "steps": 1})
        assert answer.status_code == 200
    finally:
        stop_server(server)


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    data = tmp_path / "data"  # where start_server keeps its data
    created = fastsvd("keys", "create", "--name", "ci", data_dir=data)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    key_id, _, secret = key.partition(":")
    listed = fastsvd("keys", "list", data_dir=data).stdout
    assert key_id in listed
    assert "live" in listed
    assert secret not in listed
    server = start_server(tmp_path, FASTSVD_WORKERS="0")
    try:
        assert not (server.data_dir / FIRST_KEY_FILE).exists()  # a key exists: none is made
        headers = {"Authorization": f"Key {key}"}
        assert httpx.post(
            f"{server.url}{T2V_PATH}", json={"prompt": "a"}, headers=headers
        ).is_success
        # revoked here, the key stops working once the API's cache of it expires
        # (tests/api/test_key_cache.py, on a clock the test moves)
        assert fastsvd("keys", "revoke", key_id, data_dir=data).returncode == 0
    finally:
        stop_server(server)
    again = fastsvd("keys", "revoke", key_id, data_dir=data)
    assert again.returncode == 2
    assert again.stderr.startswith("error: key_id: ")


STORE_COMMANDS = (
    ("serve",),
    ("worker",),
    ("webhooks",),
    ("keys", "create"),
    ("keys", "list"),
    ("keys", "revoke"),
    ("keys", "webhook-secret"),
)


@pytest.mark.parametrize("path", STORE_COMMANDS, ids=" ".join)
def test_every_command_that_opens_the_store_takes_the_same_options(path: tuple[str, ...]) -> None:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    options = {opt for param in command.params for opt in param.opts}
    assert {"--data-dir", "--database-url"} <= options


def test_keys_go_to_the_store_the_options_name(tmp_path: Path) -> None:
    ours, other = tmp_path / "ours", tmp_path / "other"
    created = fastsvd("keys", "create", "--name", "ops", "--data-dir", str(ours))
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.strip().partition(":")[0]
    assert created.stderr.strip() == (
        f"created user key {key_id} in sqlite:///{ours.resolve() / 'fastsvd.db'}"
    )
    assert key_id in fastsvd("keys", "list", "--data-dir", str(ours)).stdout
    assert key_id in fastsvd("keys", "list", data_dir=ours).stdout  # FASTSVD_DATA_DIR alike
    assert key_id not in fastsvd("keys", "list", "--data-dir", str(other)).stdout
    secret = fastsvd("keys", "webhook-secret", key_id, "--data-dir", str(ours))
    assert secret.returncode == 0
    assert secret.stdout.strip()
    elsewhere = fastsvd("keys", "revoke", key_id, "--data-dir", str(other))
    assert elsewhere.returncode == 2
    assert f"in sqlite:///{other.resolve() / 'fastsvd.db'}" in elsewhere.stderr
    assert fastsvd("keys", "revoke", key_id, "--data-dir", str(ours)).returncode == 0


def test_keys_on_postgresql_by_option_and_by_environment(tmp_path: Path) -> None:
    with postgres_database() as url:
        created = fastsvd("keys", "create", "--admin", "--database-url", url, data_dir=tmp_path)
        assert created.returncode == 0, created.stderr
        key_id = created.stdout.strip().partition(":")[0]
        assert created.stderr.strip().startswith(f"created admin key {key_id} in postgresql")
        assert url.rsplit("/", 1)[1] in created.stderr
        assert not (tmp_path / "fastsvd.db").exists()  # not the data folder's SQLite
        listed = fastsvd("keys", "list", FASTSVD_DATABASE_URL=url).stdout
        assert key_id in listed
        assert "admin" in listed


def test_files_are_deleted_after_the_retention_period(tmp_path: Path) -> None:
    server = start_server(tmp_path, FASTSVD_RETENTION_S="2", FASTSVD_HOUSEKEEPING_INTERVAL_S="0.2")
    try:
        with server.client() as client:
            sub = client.post(T2V_PATH, json={"prompt": "a", "steps": 1}).json()
            wait_done(client, sub["status_url"])
            url = client.get(sub["response_url"]).json()["video"]["url"]
            assert httpx.get(url).status_code == 200
            assert any(p.is_file() for p in (server.data_dir / "files").rglob("*"))
            wait_for(lambda: httpx.get(url).status_code == 404, "the file to expire")
            wait_for(  # housekeeping removes the bytes too
                lambda: not any(p.is_file() for p in (server.data_dir / "files").rglob("*")),
                "the expired bytes to be deleted",
            )
    finally:
        stop_server(server)


def test_ready_only_once_a_worker_has_loaded_its_model(tmp_path: Path) -> None:
    server = start_server(tmp_path, FASTSVD_WORKERS="1", FAKE_LOAD_S="4", _PROBE="/health")
    try:
        early = httpx.get(f"{server.url}/ready")
        assert early.status_code == 503
        assert early.json() == {
            "status": "starting",
            "workers_ready": 0,
            "endpoints": dict.fromkeys(ENDPOINTS.ids(), 0),
        }
        wait_for(lambda: httpx.get(f"{server.url}/ready").status_code == 200, "/ready")
        ready = httpx.get(f"{server.url}/ready").json()
        assert ready["endpoints"] == dict.fromkeys(ENDPOINTS.ids(), 1)  # the one serves all
    finally:
        stop_server(server)


def test_json_logs_carry_the_request_id(tmp_path: Path) -> None:
    import json

    server = start_server(tmp_path, FASTSVD_LOG_FORMAT="json")
    try:
        with server.client() as client:
            sub = client.post(T2V_PATH, json={"prompt": "a", "steps": 1}).json()
            wait_done(client, sub["status_url"])
        wait_for(lambda: '"job completed"' in server.log(), "the completion's log line")
        entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        mine = [e for e in entries if e.get("request_id") == sub["request_id"]]
        assert [e["msg"] for e in mine] == ["job started", "job completed"]
        assert all({"ts", "level", "logger", "pid"} <= set(e) for e in mine)
        assert server.key.split(":")[1] not in server.log()  # not even the first-start banner
    finally:
        stop_server(server)


def test_one_worker_per_visible_gpu(monkeypatch: object) -> None:
    import pytest

    from fastsvd.serve import visible_gpus

    patch = pytest.MonkeyPatch()
    try:
        patch.setenv("CUDA_VISIBLE_DEVICES", "0,1,3")
        assert visible_gpus() == 3
        patch.setenv("CUDA_VISIBLE_DEVICES", "")
        assert visible_gpus() == 0
    finally:
        patch.undo()


def test_flags_given_to_serve_reach_its_workers(tmp_path: Path) -> None:
    """``serve --preset tiny --data-dir X`` (what ``make run PRESET=tiny`` runs): the workers
    load the same models and use the same database as the API."""
    from fastsvd.serve import Supervisor
    from fastsvd.settings import Settings

    settings = Settings(preset="tiny", data_dir=tmp_path / "elsewhere")
    supervisor = Supervisor(settings, count=2, gpus=2)
    for child in supervisor.workers:
        assert child.env["FASTSVD_PRESET"] == "tiny"
        assert child.env["FASTSVD_DATA_DIR"] == str((tmp_path / "elsewhere").resolve())
    assert [c.env.get("CUDA_VISIBLE_DEVICES") for c in supervisor.workers[1:]] == ["0", "1"]


def test_serve_hands_its_store_to_the_workers_it_starts(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://db.internal/fastsvd")
    env = child_env(settings)
    assert env["FASTSVD_DATA_DIR"] == str(tmp_path.resolve())
    assert env["FASTSVD_DATABASE_URL"] == "postgresql://db.internal/fastsvd"
