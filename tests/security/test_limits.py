"""Limits and isolation: body size, prompt length, per-key request rate and submit rate, a key's
unfinished requests, the queue's depth, failed keys per address; admin and user scopes; one key
never sees, follows or cancels another key's requests.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fastsvd.api.limits import JSON_BODY_MAX_BYTES
from tests.support.bodies import ONE_STEP, T2V_PATH
from tests.support.servers import Server, start_server, stop_server, user_key

pytestmark = [pytest.mark.slow, pytest.mark.process]


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No worker (requests stay queued) and small limits, each test using its own keys."""
    running = start_server(
        tmp_path_factory.mktemp("limited"),
        FASTSVD_WORKERS="0",
        FASTSVD_REQUESTS_PER_S="5",  # bursts of 10
        FASTSVD_SUBMITS_PER_MINUTE="4",
        FASTSVD_MAX_ACTIVE_PER_KEY="3",
        FASTSVD_MAX_QUEUED="1000",
    )
    try:
        yield running
    finally:
        stop_server(running)


def client(server: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Key {key}"}, timeout=60)


def assert_429(answer: httpx.Response, words: str) -> int:
    assert answer.status_code == 429, answer.text
    assert words in answer.json()["detail"]
    retry_after = int(answer.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


def raw_post(server: Server, path: str, key: str, length: int | None, send: int) -> str:
    """POST ``send`` bytes over a raw socket (declaring ``length``, or chunked when None), stop
    when the server answers, and return its status line and body."""
    host, port = server.url.removeprefix("http://").split(":")
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Key {key}\r\n"
        f"content-type: application/json\r\n{framing}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        piece = b"x" * 65536
        if length is None:
            piece = b"%x\r\n%s\r\n" % (len(piece), piece)
        sent = 0
        with contextlib.suppress(OSError):  # the server may close as soon as it has answered
            while sent < send:
                ready, _, _ = select.select([sock], [], [], 0)
                if ready:
                    break  # an answer before the whole body: it was refused unread
                sock.sendall(piece)
                sent += len(piece)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                    break
    return answer.decode(errors="replace")


def test_bodies_over_the_limit_get_413_before_being_read(limited: Server) -> None:
    key = user_key(limited)
    over = JSON_BODY_MAX_BYTES + 1
    declared = raw_post(limited, T2V_PATH, key, over, send=0)  # refused on the header alone
    assert declared.startswith("HTTP/1.1 413"), declared[:200]
    assert "limited to" in declared
    streamed = raw_post(limited, T2V_PATH, key, None, send=over + 65536)  # counted as it arrives
    assert streamed.startswith("HTTP/1.1 413"), streamed[:200]
    upload = raw_post(limited, "/files/upload", key, 50 * 1024 * 1024 + 1, send=0)
    assert upload.startswith("HTTP/1.1 413"), upload[:200]
    assert httpx.get(f"{limited.url}/health").status_code == 200  # and the server is fine


def test_a_prompt_over_its_length_is_422_naming_it(limited: Server) -> None:
    with client(limited, user_key(limited)) as c:
        answer = c.post(T2V_PATH, json={"prompt": "x" * 2001})
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"] == ["body", "prompt"]
        assert "2000" in answer.json()["detail"][0]["msg"]


def test_per_key_request_rate(limited: Server) -> None:
    noisy, quiet = user_key(limited, "noisy"), user_key(limited, "quiet")
    with client(limited, noisy) as c, client(limited, quiet) as q:
        answers = [c.get("/fal-ai/fast-svd/requests") for _ in range(30)]
        codes = [a.status_code for a in answers]
        assert codes.count(200) >= 10  # the burst
        assert 429 in codes
        wait = assert_429(next(a for a in answers if a.status_code == 429), "this key")
        assert q.get("/fal-ai/fast-svd/requests").status_code == 200  # another key: unaffected
        time.sleep(wait)
        assert c.get("/fal-ai/fast-svd/requests").status_code == 200  # and it comes back


def test_per_key_submit_rate_and_unfinished_requests(limited: Server) -> None:
    key, other = user_key(limited, "submitter"), user_key(limited, "other")
    with client(limited, key) as c, client(limited, other) as o:
        ids = [
            c.post(T2V_PATH, json={"prompt": f"p{i}", **ONE_STEP}).json()["request_id"]
            for i in range(3)
        ]
        assert_429(c.post(T2V_PATH, json={"prompt": "p3", **ONE_STEP}), "unfinished requests")
        assert c.put(f"/fal-ai/fast-svd/requests/{ids[0]}/cancel").status_code == 202
        once = {"idempotency-key": "k"}
        fourth = c.post(T2V_PATH, json={"prompt": "p4", **ONE_STEP}, headers=once)
        assert fourth.status_code == 200  # room again
        assert c.put(f"/fal-ai/fast-svd/requests/{ids[1]}/cancel").status_code == 202
        wait = assert_429(c.post(T2V_PATH, json={"prompt": "p5", **ONE_STEP}), "requests a minute")
        assert wait <= 60
        # a repeat of an accepted request (same idempotency key) is answered, not counted
        repeat = c.post(T2V_PATH, json={"prompt": "p4", **ONE_STEP}, headers=once)
        assert repeat.status_code == 200
        assert repeat.json()["request_id"] == fourth.json()["request_id"]
        assert o.post(T2V_PATH, json={"prompt": "other", **ONE_STEP}).status_code == 200


def test_global_queue_cap(tmp_path: Path) -> None:
    server = start_server(tmp_path, FASTSVD_WORKERS="0", FASTSVD_MAX_QUEUED="2")
    try:
        with client(server, user_key(server, "a")) as a, client(server, user_key(server)) as b:
            assert a.post(T2V_PATH, json={"prompt": "1", **ONE_STEP}).status_code == 200
            assert b.post(T2V_PATH, json={"prompt": "2", **ONE_STEP}).status_code == 200
            assert_429(a.post(T2V_PATH, json={"prompt": "3", **ONE_STEP}), "queue is full")
    finally:
        stop_server(server)


def test_failed_keys_are_limited_per_address_but_good_keys_pass(tmp_path: Path) -> None:
    # bursts of 10 wrong keys, then one a second
    server = start_server(tmp_path, FASTSVD_WORKERS="0", FASTSVD_AUTH_FAILURES_PER_S="1")
    try:
        good = user_key(server, "good")
        with client(server, good) as c:
            assert c.get("/fal-ai/fast-svd/requests").status_code == 200  # now known good
        with client(server, "00000000-0000-0000-0000-000000000000:wrong") as bad:
            codes = [bad.get("/fal-ai/fast-svd/requests").status_code for _ in range(15)]
            assert codes[:10] == [401] * 10
            assert 429 in codes[10:]
            assert_429(bad.get("/fal-ai/fast-svd/requests"), "wrong or missing key")
        anonymous = httpx.get(f"{server.url}/fal-ai/fast-svd/requests")
        assert anonymous.status_code == 429  # same address, no key at all
        with client(server, good) as c:
            assert c.get("/fal-ai/fast-svd/requests").status_code == 200
    finally:
        stop_server(server)


def test_admin_and_user_scopes(limited: Server) -> None:
    user = user_key(limited, "plain")
    with client(limited, user) as u:
        assert u.get("/admin/keys").status_code == 403
        assert u.post("/admin/keys", json={"name": "x"}).status_code == 403
        assert u.delete("/admin/keys/whatever").status_code == 403
    with client(limited, limited.key) as admin:
        created = admin.post("/admin/keys", json={"name": "made", "scope": "user"})
        assert created.status_code == 201
        made = created.json()
        assert made["scope"] == "user"
        listed = admin.get("/admin/keys").json()["keys"]
        assert made["key_id"] in [k["key_id"] for k in listed]
        assert all("secret" not in k and "key" not in k for k in listed)  # never a secret
        assert admin.delete(f"/admin/keys/{made['key_id']}").status_code == 200
        assert admin.delete(f"/admin/keys/{made['key_id']}").status_code == 404
        assert admin.post("/admin/keys", json={"scope": "root"}).status_code == 422
    with client(limited, made["key"]) as revoked:  # never used, so never cached
        assert revoked.get("/fal-ai/fast-svd/requests").status_code == 401


def test_one_key_never_sees_or_cancels_another_keys_requests(limited: Server) -> None:
    owner, stranger = user_key(limited, "owner"), user_key(limited, "stranger")
    with client(limited, owner) as o, client(limited, stranger) as s:
        mine = o.post(T2V_PATH, json={"prompt": "private", **ONE_STEP}).json()
        rid = mine["request_id"]
        base = f"/fal-ai/fast-svd/requests/{rid}"
        for path in (base, f"{base}/status", f"{base}/status/stream"):
            answer = s.get(path)
            assert answer.status_code == 404, path
            assert "private" not in answer.text
        assert s.put(f"{base}/cancel").status_code == 404
        assert rid not in s.get("/fal-ai/fast-svd/requests").text
        assert o.get(f"{base}/status").json()["status"] == "IN_QUEUE"  # untouched
        # an upload slot is bound to its token, not to whoever knows the file id
        slot = o.post("/storage/upload/initiate", json={"file_name": "a.png"}).json()
        without_token = slot["upload_url"].split("?")[0]
        assert s.put(without_token, content=b"x").status_code == 404
        assert s.put(without_token + "?token=guess", content=b"x").status_code == 404
        assert o.put(f"{base}/cancel").status_code == 202
