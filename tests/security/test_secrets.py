"""Secrets: keys are stored only as hashes and checked in constant time; no key, webhook secret,
webhook signing key or upload token appears in the logs (at DEBUG), in error messages or in the
metrics.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from fastsvd.serve import FIRST_KEY_FILE
from fastsvd.store.db import Database
from fastsvd.store.keys import KeyStore
from fastsvd.store.migrations import migrate
from fastsvd.store.tables import api_keys, webhook_signing_keys
from tests.support.bodies import T2V_PATH
from tests.support.receivers import Receiver
from tests.support.servers import Server, start_server, stop_server, wait_done

pytestmark = pytest.mark.process  # starts server processes


CHATTY = {"FASTSVD_LOG_LEVEL": "DEBUG", "FASTSVD_LOG_FORMAT": "json"}


@pytest.fixture
def chatty(tmp_path: Path, receiver: Receiver) -> Iterator[Server]:
    """A server logging everything, as JSON, with webhooks allowed to reach loopback."""
    running = start_server(tmp_path, **CHATTY, FASTSVD_ALLOW_PRIVATE_URLS="1")
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture
def chatty_failing(tmp_path: Path) -> Iterator[Server]:
    """A server logging everything, as JSON, whose model fails every request."""
    running = start_server(
        tmp_path / "failing", **CHATTY, FASTSVD_RUNNER="tests.fakes.runner:Failing"
    )
    try:
        yield running
    finally:
        stop_server(running)


@pytest.mark.slow
def test_no_secret_reaches_logs_errors_or_metrics(
    chatty: Server, chatty_failing: Server, receiver: Receiver
) -> None:
    secrets: list[str] = [chatty.key, chatty.key.split(":")[1]]
    secrets += [chatty_failing.key, chatty_failing.key.split(":")[1]]
    bodies: list[str] = []
    with chatty.client() as admin:
        made = admin.post("/admin/keys", json={"name": "second"}).json()
        secrets += [made["key"], made["key"].split(":")[1], made["webhook_secret"]]
        with chatty.client(made["key"]) as user:
            hooked = user.post(
                T2V_PATH, params={"fal_webhook": f"{receiver.url}/hook"}, json={"prompt": "ok"}
            ).json()
            wait_done(user, hooked["status_url"])
            bodies.append(user.get(hooked["response_url"]).text)
            receiver.wait(1)
            slot = user.post("/storage/upload/initiate", json={"file_name": "a.png"}).json()
            secrets.append(slot["upload_url"].split("token=")[1])
            bodies.append(user.put(slot["upload_url"], content=b"not a png").text)
        # wrong keys, in every place a key can be sent
        wrong = f"{made['key_id']}:{'f' * 64}"
        secrets.append(wrong.split(":")[1])
        for header in (f"Key {wrong}", f"Bearer {wrong}", wrong, "Key nonsense"):
            answer = httpx.get(
                f"{chatty.url}/fal-ai/fast-svd/requests", headers={"authorization": header}
            )
            assert answer.status_code == 401
            bodies.append(answer.text)
        bodies.append(admin.get("/metrics").text)
        bodies.append(admin.get("/admin/keys").text)
        bodies.append(httpx.get(f"{chatty.url}/.well-known/jwks.json").text)
        db = Database(chatty.database_url)
        try:  # the webhook signing key's private half, in both of its spellings
            with db.read() as conn:
                seed = conn.scalar(select(webhook_signing_keys.c.private_key))
        finally:
            db.dispose()
        padded = seed + "=" * (-len(seed) % 4)
        secrets += [seed, base64.urlsafe_b64decode(padded).hex()]
        assert admin.delete(f"/admin/keys/{made['key_id']}").status_code == 200
    with chatty_failing.client() as other:
        failing = other.post(T2V_PATH, json={"prompt": "ok"}).json()
        assert wait_done(other, failing["status_url"])["error_type"] == "generation_failed"
        bodies.append(other.get(failing["response_url"]).text)
    for server in (chatty, chatty_failing):
        stop_server(server)  # flush everything the processes had to say
        log = server.log()
        assert '"level": "DEBUG"' in log or '"level": "INFO"' in log  # the log is being written
        for secret in secrets:
            assert secret not in log
    for secret in secrets:
        for body in bodies:
            assert secret not in body


def test_keys_are_stored_as_hashes_and_checked_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'k.db'}")
    try:
        migrate(db)
        keys = KeyStore(db)
        key, info = keys.create("k")
        secret = key.split(":")[1]
        with db.read() as conn:
            row = conn.execute(select(api_keys)).one()
        assert secret not in " ".join(str(v) for v in row)
        assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
        compared: list[int] = []
        real = hmac.compare_digest

        def spy(a: str, b: str) -> bool:
            compared.append(1)
            return real(a, b)

        monkeypatch.setattr(hmac, "compare_digest", spy)
        assert keys.check(key) is not None
        assert keys.check(f"{info.key_id}:wrong") is None
        assert keys.check("00000000-0000-0000-0000-000000000000:wrong") is None  # unknown id
        assert len(compared) == 3  # the same comparison, known key or not
    finally:
        db.dispose()


@pytest.mark.slow
def test_the_first_key_goes_to_an_owner_only_file_not_the_log(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        path = server.data_dir / FIRST_KEY_FILE
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert server.key
        assert server.key in path.read_text()
        assert server.key not in server.log()  # stdout is a file here, not a terminal
        assert str(path) in server.log()
    finally:
        stop_server(server)
