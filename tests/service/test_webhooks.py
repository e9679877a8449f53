"""Webhooks: fal's body, signed, retried with backoff, never redirected, never private."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from click.testing import CliRunner
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fastsvd.cli import main
from fastsvd.schema import WebhookBody
from tests.support.bodies import ONE_STEP, T2V_PATH
from tests.support.inprocess import InProcessServer, start_in_process
from tests.support.receivers import Receiver, settled, webhook_row
from tests.support.servers import Server, start_server, stop_server, wait_done, wait_for

# allowed to call loopback receivers, retrying fast (4 tries over 1.5 s)
HOOKED_ENV = {
    "FASTSVD_ALLOW_PRIVATE_URLS": "1",
    "FASTSVD_WEBHOOK_ATTEMPTS": "4",
    "FASTSVD_WEBHOOK_WINDOW_S": "1.5",
}


@pytest.fixture(scope="module")
def hooked(
    tmp_path_factory: pytest.TempPathFactory, backend: dict[str, str]
) -> Iterator[InProcessServer]:
    """A server in this process (its worker and deliverer in threads) with ``HOOKED_ENV``."""
    server = start_in_process(tmp_path_factory.mktemp("webhooks"), **backend, **HOOKED_ENV)
    yield server
    server.close()


@pytest.fixture
def hooked_process(
    tmp_path_factory: pytest.TempPathFactory, fresh_backend: dict[str, str]
) -> Iterator[Server]:
    """A server process with ``HOOKED_ENV``, for fal's client, which needs a real URL (on a
    database of its own, where it makes the first key)."""
    server = start_server(tmp_path_factory.mktemp("webhooks"), **fresh_backend, **HOOKED_ENV)
    yield server
    stop_server(server)


def webhook_secret(server: Server | InProcessServer) -> str:
    key_id = server.key.split(":")[0]
    with server.key_store() as keys:
        return next(k.webhook_secret for k in keys.list() if k.key_id == key_id)


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return headers["webhook-signature"] == f"v1,{expected}"


def test_one_signed_webhook_per_request(hooked: InProcessServer, receiver: Receiver) -> None:
    with hooked.client() as client:
        sub = client.post(
            T2V_PATH,
            params={"fal_webhook": f"{receiver.url}/hook"},
            json={"prompt": "a", **ONE_STEP},
        ).json()
        wait_done(client, sub["status_url"])
        receiver.wait(1)
        # nothing more arrives: the outbox row is done, after one try
        settled(hooked, sub["request_id"], "delivered", attempts=1)
        assert len(receiver.received) == 1
        path, headers, body = receiver.received[0]
        assert path == "/hook"
        payload = json.loads(body)
        WebhookBody.model_validate(payload)
        assert payload["request_id"] == sub["request_id"]
        assert payload["status"] == "OK"
        assert payload["payload"]["video"]["url"].startswith(f"{hooked.url}/files/")
        assert headers["webhook-id"] == sub["request_id"]
        assert verify(webhook_secret(hooked), headers, body)


def test_failed_request_sends_an_error_webhook(
    tmp_path_factory: pytest.TempPathFactory, fresh_backend: dict[str, str], receiver: Receiver
) -> None:
    server = start_in_process(  # a model that fails every request
        tmp_path_factory.mktemp("failing"),
        **fresh_backend,
        **HOOKED_ENV,
        FASTSVD_RUNNER="tests.fakes.runner:Failing",
    )
    try:
        with server.client() as client:
            client.post(
                T2V_PATH, params={"fal_webhook": receiver.url}, json={"prompt": "a", **ONE_STEP}
            )
            receiver.wait(1)
    finally:
        server.close()
    payload = json.loads(receiver.received[0][2])
    assert payload["status"] == "ERROR"
    assert payload["error"] == "Invalid status code: 500"
    assert payload["payload"] == {"detail": "the fake model failed on purpose"}


def test_receiver_errors_are_retried_until_accepted(
    hooked: InProcessServer, receiver: Receiver
) -> None:
    receiver.script = [500, 503]
    with hooked.client() as client:
        sub = client.post(
            T2V_PATH, params={"fal_webhook": receiver.url}, json={"prompt": "a", **ONE_STEP}
        ).json()
        receiver.wait(3)
        settled(hooked, sub["request_id"], "delivered", attempts=3)
        assert len(receiver.received) == 3  # two failures, one success, then nothing
        assert len({r[2] for r in receiver.received}) == 1  # the same body each time


def test_redirects_are_not_followed_and_tries_are_capped(
    hooked: InProcessServer, receiver: Receiver
) -> None:
    receiver.script = [301] * 10
    with hooked.client() as client:
        sub = client.post(
            T2V_PATH, params={"fal_webhook": receiver.url}, json={"prompt": "a", **ONE_STEP}
        ).json()
        receiver.wait(4)
        settled(hooked, sub["request_id"], "failed", attempts=4)  # given up: no 5th try
        assert [r[0] for r in receiver.received] == ["/"] * 4  # never /redirected, 4 tries


def test_a_receiver_that_is_down_is_retried_then_given_up(hooked: InProcessServer) -> None:
    """R16, receiver down: connections refused on every try; the tries are capped, the webhook is
    recorded as failed, and the request and the service are unaffected."""
    from tests.objectstore import free_port

    nowhere = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    with hooked.client() as client:
        sub = client.post(
            T2V_PATH, params={"fal_webhook": nowhere}, json={"prompt": "a", **ONE_STEP}
        )
        done = wait_done(client, sub.json()["status_url"])
        assert done.get("error") is None
        request_id = sub.json()["request_id"]
        wait_for(
            lambda: webhook_row(hooked, request_id)["webhook_state"] == "failed",
            "the webhook to be given up",
        )
        job = webhook_row(hooked, request_id)
        assert job["webhook_attempts"] == 4
        assert "connect" in job["webhook_error"].lower()
    assert hooked.public("GET", "/health").status_code == 200


def test_private_webhook_targets_are_refused_by_default(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    server = start_in_process(tmp_path_factory.mktemp("private"))  # short: a socket lives there
    try:
        with server.client() as client:
            for target in (
                "http://127.0.0.1:9/hook",
                "http://169.254.169.254/",
                "ftp://example.com/",
            ):
                answer = client.post(T2V_PATH, params={"fal_webhook": target}, json={"prompt": "a"})
                assert answer.status_code == 422, target
                assert answer.json()["detail"][0]["loc"] == ["query", "fal_webhook"]
    finally:
        server.close()


@pytest.mark.process  # runs the command
def test_webhook_secret_command_shows_the_keys_secret(hooked: InProcessServer) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "fastsvd.cli", "keys", "webhook-secret", hooked.key.split(":")[0]],
        env={
            **__import__("os").environ,
            "FASTSVD_DATA_DIR": str(hooked.data_dir),
            "FASTSVD_DATABASE_URL": hooked.database_url,
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == webhook_secret(hooked)
    assert hooked.public("GET", "/health").status_code == 200


@pytest.mark.process
def test_fal_client_submit_with_a_webhook(hooked_process: Server, receiver: Receiver) -> None:
    hooked = hooked_process
    import fal_client
    import fal_client.client as fal_module

    saved = fal_module.QUEUE_URL_FORMAT
    fal_module.QUEUE_URL_FORMAT = f"{hooked.url}/"
    client = fal_client.SyncClient(key=hooked.key)
    try:
        handle = client.submit(
            "fal-ai/fast-svd/text-to-video",
            {"prompt": "a", **ONE_STEP},
            webhook_url=f"{receiver.url}/from-fal-client",
        )
        receiver.wait(1)
        path, headers, body = receiver.received[0]
        assert path == "/from-fal-client"
        assert json.loads(body)["request_id"] == handle.request_id
        assert fal_verify(fal_public_keys(hooked), headers, body)
    finally:
        fal_module.QUEUE_URL_FORMAT = saved
        if "_client" in client.__dict__:
            client._client.close()


def test_image_to_video_from_a_data_uri_and_from_a_url(hooked: InProcessServer) -> None:
    """(On the server that may reach loopback: plain http URLs are allowed there.)"""
    import io

    import av
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (30, 60, 220)).save(buffer, format="PNG")
    png = buffer.getvalue()

    def colour_of(body: dict[str, object]) -> list[int]:
        with hooked.client() as client:
            sub = client.post("/fal-ai/fast-svd", json={**body, **ONE_STEP})
            assert sub.status_code == 200, sub.text
            done = wait_done(client, sub.json()["status_url"])
            assert done.get("error") is None, done
            url = client.get(sub.json()["response_url"]).json()["video"]["url"]
        with av.open(io.BytesIO(hooked.public("GET", url).content)) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
        return [round(float(v)) for v in frame.reshape(-1, 3).mean(axis=0)]

    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    assert abs(colour_of({"image_url": uri})[2] - 220) < 8
    files = FileSite(png)
    try:
        assert abs(colour_of({"image_url": f"{files.url}/pic.png"})[2] - 220) < 8
        assert files.seen == ["/pic.png"]
    finally:
        files.close()


class FileSite:
    """Serves one file at any path."""

    def __init__(self, data: bytes) -> None:
        self.seen: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.seen.append(self.path)
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


# --- fal's signatures, checked as fal's receivers check them ---------------------------------
# Written from fal's documentation (docs.fal.ai, "Verifying your webhook") with `cryptography`
# alone: nothing of fastsvd's signing code is used, so a wrong message layout, encoding or key
# format in fastsvd fails here as it would fail a migrated receiver.

FAL_SKEW_S = 300  # fal's receivers accept timestamps within five minutes


def fal_public_keys(server: Server | InProcessServer) -> list[Ed25519PublicKey]:
    """The keys of the server's JWKS, fetched without a key as a receiver does."""
    path = "/.well-known/jwks.json"
    if isinstance(server, InProcessServer):
        answer = server.public("GET", path)
    else:
        answer = httpx.get(f"{server.url}{path}")
    assert answer.status_code == 200
    keys = []
    for jwk in answer.json()["keys"]:
        assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519")
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        keys.append(Ed25519PublicKey.from_public_bytes(raw))
    return keys


def fal_verify(
    keys: list[Ed25519PublicKey], headers: dict[str, str], body: bytes, now: float | None = None
) -> bool:
    """fal's algorithm: the timestamp within the skew, then an Ed25519 signature (hex) by any
    published key over request_id, user_id, timestamp and the body's SHA-256 (hex), one a line."""
    lower = {name.lower(): value for name, value in headers.items()}
    try:
        request_id = lower["x-fal-webhook-request-id"]
        user_id = lower["x-fal-webhook-user-id"]
        timestamp = lower["x-fal-webhook-timestamp"]
        signature = bytes.fromhex(lower["x-fal-webhook-signature"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > FAL_SKEW_S:
        return False
    digest = hashlib.sha256(body).hexdigest()
    message = f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()
    for key in keys:
        try:
            key.verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False


def hooked_submit(
    server: InProcessServer, receiver: Receiver, count: int
) -> tuple[dict[str, str], bytes]:
    """Submit a request with a webhook; the ``count``-th webhook the receiver got."""
    with server.client() as client:
        client.post(
            T2V_PATH,
            params={"fal_webhook": f"{receiver.url}/fal"},
            json={"prompt": "a", **ONE_STEP},
        ).raise_for_status()
    receiver.wait(count)
    _path, headers, body = receiver.received[count - 1]
    return headers, body


def test_fal_signature_verifies_as_fals_receivers_check_it(
    hooked: InProcessServer, receiver: Receiver
) -> None:
    headers, body = hooked_submit(hooked, receiver, 1)
    keys = fal_public_keys(hooked)
    assert fal_verify(keys, headers, body)
    lower = {name.lower(): value for name, value in headers.items()}
    payload = json.loads(body)
    assert lower["x-fal-webhook-request-id"] == payload["request_id"]
    assert lower["x-fal-webhook-user-id"] == hooked.key.split(":")[0]  # the key's owner
    assert {"request_id", "gateway_request_id", "status", "payload"} <= set(payload)
    assert payload["status"] == "OK"

    for position in (0, len(body) // 2, len(body) - 1):  # one byte changed anywhere
        tampered = bytearray(body)
        tampered[position] ^= 0x01
        assert not fal_verify(keys, headers, bytes(tampered))
    sent_at = int(lower["x-fal-webhook-timestamp"])
    assert fal_verify(keys, headers, body, now=sent_at + FAL_SKEW_S)
    assert not fal_verify(keys, headers, body, now=sent_at + FAL_SKEW_S + 1)
    assert not fal_verify(keys, headers, body, now=sent_at - FAL_SKEW_S - 1)
    replayed = {**headers, "x-fal-webhook-timestamp": str(sent_at + 60)}  # a fresh-looking time
    assert not fal_verify(keys, replayed, body, now=sent_at + 60)
    assert verify(webhook_secret(hooked), headers, body)  # Standard Webhooks still signs too


def rotate_signing_key(server: InProcessServer, overlap_s: float) -> None:
    """``fastsvd keys rotate-webhook-signing-key`` on the server's database."""
    env = {"FASTSVD_DATA_DIR": str(server.data_dir), "FASTSVD_DATABASE_URL": server.database_url}
    result = CliRunner().invoke(
        main, ["keys", "rotate-webhook-signing-key", "--overlap-s", str(overlap_s)], env=env
    )
    assert result.exit_code == 0, result.output
    assert "signing with key" in result.output


def test_a_rotated_key_still_verifies_during_the_overlap(
    hooked: InProcessServer, receiver: Receiver
) -> None:
    before = fal_public_keys(hooked)
    old_headers, old_body = hooked_submit(hooked, receiver, 1)
    rotate_signing_key(hooked, overlap_s=3600)
    during = fal_public_keys(hooked)
    assert len(during) == len(before) + 1  # both published
    assert fal_verify(during, old_headers, old_body)  # signed before the rotation
    new_headers, new_body = hooked_submit(hooked, receiver, 2)
    assert fal_verify(during, new_headers, new_body)
    assert not fal_verify(before, new_headers, new_body)  # the new key signs now
    rotate_signing_key(hooked, overlap_s=0)  # no overlap: the previous keys go at once
    after = fal_public_keys(hooked)
    assert len(after) == 1
    assert not fal_verify(after, old_headers, old_body)
    assert not fal_verify(after, new_headers, new_body)
