"""SSRF: every place the server fetches or posts to a URL (``image_url``, ``fal_webhook`` at
submit and again at delivery) refuses internal targets, in every spelling, with a 422 naming
the field, and never opens a connection to them.

Two witnesses prove "no connection": a TCP listener on the internal target (127.0.0.2 and ::1,
one port) that counts every connection it accepts, and, in-process, a recorder of every address
a socket tried to connect to (for targets that cannot be listened on here, like 10.0.0.1).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from fastsvd.errors import InvalidInput
from fastsvd.net import guard as netguard
from fastsvd.net.fetch import fetch
from fastsvd.settings import Settings
from fastsvd.store.db import Database
from fastsvd.store.jobs import JobStore
from fastsvd.store.keys import KeyStore
from fastsvd.store.migrations import migrate
from fastsvd.store.signing import SigningKeyStore
from fastsvd.store.tables import jobs as jobs_table
from fastsvd.store.webhooks import WebhookOutbox
from fastsvd.webhooks import Deliverer
from tests.support.bodies import I2V_PATH, T2V_PATH
from tests.support.inprocess import InProcessServer
from tests.test_fetch import Site


class Listener:
    """TCP listeners on 127.0.0.2 and [::1], on one port, counting accepted connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self.sockets: list[socket.socket] = []
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.bind(("127.0.0.2", 0))
        self.port = v4.getsockname()[1]
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        v6.bind(("::1", self.port))
        for sock in (v4, v6):
            sock.listen(64)
            sock.settimeout(0.2)
            self.sockets.append(sock)
            threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    running = Listener()
    yield running
    running.close()


def blocked_urls(port: int) -> list[str]:
    """Internal targets in every spelling: the listener's port where one can listen."""
    p = port
    return [
        # loopback, as written and as the C resolver also reads it
        f"http://127.0.0.2:{p}/",
        f"http://localhost:{p}/",
        f"http://LOCALHOST.:{p}/",
        f"http://127.2:{p}/",  # short form
        f"http://2130706434:{p}/",  # one decimal number
        f"http://0177.0.0.2:{p}/",  # octal
        f"http://127.000.000.002:{p}/",  # zero-padded
        f"http://0x7f000002:{p}/",  # hexadecimal
        f"http://0x7f.0.0.2:{p}/",  # hexadecimal octet
        f"http://0:{p}/",  # 0.0.0.0, which Linux connects to the host itself
        f"http://0.0.0.0:{p}/",
        # IPv6 loopback, unspecified and IPv4 inside IPv6
        f"http://[::1]:{p}/",
        f"http://[0:0:0:0:0:0:0:1]:{p}/",
        f"http://[::]:{p}/",
        f"http://[::ffff:127.0.0.2]:{p}/",
        f"http://[::ffff:7f00:2]:{p}/",
        f"http://[0:0:0:0:0:ffff:127.0.0.2]:{p}/",
        f"http://[64:ff9b::7f00:2]:{p}/",  # NAT64
        f"http://[2002:7f00:2::]:{p}/",  # 6to4
        # private, CGNAT, link-local and the cloud metadata service
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "http://192.168.0.1/",
        "http://100.64.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",  # AWS metadata over IPv6
        "http://100.100.100.200/latest/meta-data/",  # Alibaba Cloud metadata (CGNAT)
        "http://[fe80::1%25lo]/",
        "http://[fc00::1]/",
        "http://[fd12:3456::1]/",
        "http://198.18.0.1/",
        "http://192.0.0.1/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        # URL-parser confusion: the host the check sees is the host that would be contacted
        f"http://127.0.0.2:{p}#@example.com/",
        f"http://127.0.0.2:{p}?@example.com/",
        f"HTTP://127.0.0.2:{p}/",
    ]


def other_urls(port: int) -> list[str]:
    """Schemes other than http(s), credentials and malformed URLs."""
    p = port
    return [
        "file:///etc/passwd",
        f"ftp://127.0.0.2:{p}/",
        f"gopher://127.0.0.2:{p}/_GET",
        f"dict://127.0.0.2:{p}/info",
        f"ldap://127.0.0.2:{p}/",
        "jar:http://example.com/a.jar!/",
        "javascript:alert(1)",
        f"//127.0.0.2:{p}/",
        f"http://example.com@127.0.0.2:{p}/",
        f"http://user:pass@127.0.0.2:{p}/",
        "http://[::1/",
        "http:///nohost",
    ]


class ConnectRecorder:
    """Every address a socket of this process tried to connect to."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.addresses: list[str] = []
        real = socket.socket.connect
        recorder = self

        def connect(sock: socket.socket, address: object) -> None:
            if isinstance(address, tuple):
                recorder.addresses.append(str(address[0]))
            real(sock, address)  # type: ignore[arg-type]

        monkeypatch.setattr(socket.socket, "connect", connect)

    def internal(self) -> list[str]:
        return [a for a in self.addresses if not _is_public(a)]


_real_is_public = netguard.is_public


def _is_public(address: str) -> bool:
    return _real_is_public(address.split("%")[0])


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> ConnectRecorder:
    return ConnectRecorder(monkeypatch)


def test_every_spelling_is_refused_for_image_url_without_connecting(
    listener: Listener, recorder: ConnectRecorder
) -> None:
    urls = blocked_urls(listener.port) + other_urls(listener.port)
    for url in urls:
        with pytest.raises(InvalidInput) as caught:
            fetch(url, "image_url", schemes=("https", "http"), timeout_s=2)
        assert caught.value.field == "image_url", url
    time.sleep(0.3)
    assert listener.accepted == 0
    assert recorder.internal() == []


def test_every_spelling_is_refused_for_webhooks_without_connecting(
    listener: Listener, recorder: ConnectRecorder
) -> None:
    for url in blocked_urls(listener.port) + other_urls(listener.port):
        with pytest.raises(InvalidInput) as caught:
            netguard.check_url(url, "fal_webhook")
        assert caught.value.field == "fal_webhook"
    assert listener.accepted == 0
    assert recorder.internal() == []


def test_a_name_that_resolves_inside_is_refused(listener: Listener) -> None:
    names = {
        "inside.test": ["127.0.0.2"],
        "mixed.test": ["93.184.215.14", "127.0.0.2"],  # one public, one internal: refused
        "v6.test": ["::1"],
        "metadata.test": ["169.254.169.254"],
    }

    def resolver(host: str, port: int) -> list[str]:
        return names[host]

    for name in names:
        url = f"http://{name}:{listener.port}/x.png"
        with pytest.raises(InvalidInput, match="not a public address") as caught:
            fetch(url, "image_url", schemes=("http",), resolver=resolver, timeout_s=2)
        assert caught.value.field == "image_url"
    assert listener.accepted == 0


@pytest.fixture
def internet(monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """A site on 127.0.0.1 that the guard treats as the public internet (only that address)."""
    monkeypatch.setattr(netguard, "is_public", lambda a: a == "127.0.0.1" or _is_public(a))
    site = Site()
    yield site
    site.close()


def test_redirects_from_an_allowed_host_to_internal_ones_are_refused(
    internet: Site, listener: Listener, recorder: ConnectRecorder
) -> None:
    # localhost is 127.0.0.1 too, which stands for the internet here
    targets = [u for u in blocked_urls(listener.port) if "localhost" not in u.lower()]
    for target in targets:
        start = f"{internet.url}/redirect?to={target}"
        with pytest.raises(InvalidInput) as caught:
            fetch(start, "image_url", schemes=("http",), timeout_s=2)
        assert caught.value.field == "image_url"
    assert len(internet.seen) == len(targets)  # the allowed host was asked each time...
    time.sleep(0.3)
    assert listener.accepted == 0  # ...and the internal one never
    assert {a for a in recorder.addresses} == {"127.0.0.1"}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/big", "larger than 1,000 bytes"),  # declared too large
        ("/slow", "too slow"),  # a body that drips
        ("/redirect?to=" * 7 + "/ok", "more than 5 redirects"),  # a chain (or a loop)
        ("/missing", "HTTP 404"),
    ],
)
def test_bodies_are_capped_in_size_and_time(internet: Site, path: str, message: str) -> None:
    url = f"{internet.url}{path}"
    with pytest.raises(InvalidInput, match=message) as caught:
        fetch(url, "image_url", schemes=("http",), max_bytes=1000, timeout_s=1)
    assert caught.value.field == "image_url"


def test_an_undeclared_oversized_body_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netguard, "is_public", lambda a: a == "127.0.0.1")
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    sent = []

    class Endless(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(10_000):  # 640 MB if nobody stops reading
                    chunk = b"x" * 65536
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent.append(len(chunk))

        def log_message(self, *args: object) -> None:
            return None

    http = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{http.server_address[1]}/endless"
        with pytest.raises(InvalidInput, match="larger than 1,048,576 bytes"):
            fetch(url, "image_url", schemes=("http",), max_bytes=1024 * 1024, timeout_s=10)
        assert sum(sent) < 64 * 1024 * 1024  # stopped early, not after the whole stream
    finally:
        http.shutdown()
        http.server_close()


def test_webhook_delivery_rechecks_the_address(tmp_path: Path, listener: Listener) -> None:
    """DNS rebinding: a webhook host that was public at submit and resolves inside at delivery
    is not posted to; the failure is recorded."""
    db = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        migrate(db)
        _key, info = KeyStore(db).create("k")
        jobs = JobStore(db)
        url = f"http://rebound.test:{listener.port}/hook"
        job, _ = jobs.submit(key_id=info.key_id, endpoint="e", input={}, webhook_url=url)
        claim = jobs.claim("w", 30, ["e"])
        assert claim is not None
        jobs.complete(job.id, claim.token, {"video": None, "seed": 1}, 0.1)
        outbox = WebhookOutbox(db)
        (pending,) = outbox.claim_due(lease_s=30)
        settings = Settings(webhook_attempts=1)
        deliverer = Deliverer(
            outbox, settings, SigningKeyStore(db), resolver=lambda host, port: ["127.0.0.2"]
        )
        assert deliverer.deliver(pending) is False
        with db.read() as conn:
            error = conn.scalar(select(jobs_table.c.webhook_error))
        assert "not a public address" in error
        time.sleep(0.3)
        assert listener.accepted == 0
    finally:
        db.dispose()


# --- through the HTTP API of a real server --------------------------------------------------


def _assert_refused(answer: httpx.Response, where: list[str]) -> None:
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail[0]["loc"] == where, detail
    assert detail[0]["msg"]


@pytest.mark.slow
def test_the_api_refuses_internal_urls_at_submit(
    target: InProcessServer, listener: Listener
) -> None:
    urls = blocked_urls(listener.port) + other_urls(listener.port)
    https = [u.replace("http://", "https://", 1) for u in urls if u.startswith("http://")]
    with target.client() as client:
        before = client.get("/fal-ai/fast-svd/requests", params={"limit": 100}).json()
        for url in urls + https:
            hooked = client.post(T2V_PATH, params={"fal_webhook": url}, json={"prompt": "a"})
            _assert_refused(hooked, ["query", "fal_webhook"])
            image = client.post(I2V_PATH, json={"image_url": url})
            if url.startswith(("http", "HTTP")):
                _assert_refused(image, ["body", "image_url"])
            else:  # refused by the schema already, also naming the field
                assert image.status_code == 422
                assert image.json()["detail"][0]["loc"][:2] == ["body", "image_url"]
            run = client.post(f"/run{I2V_PATH}", json={"image_url": url})
            assert run.status_code == 422
        after = client.get("/fal-ai/fast-svd/requests", params={"limit": 100}).json()
    assert after == before  # nothing was queued
    time.sleep(0.3)
    assert listener.accepted == 0


def test_the_matrix_covers_every_range_the_guard_knows() -> None:
    """Each kind of internal address appears in the matrix at least once."""
    hosts = []
    for url in blocked_urls(1):
        host = urllib.parse.urlsplit(url.replace("%25lo", "")).hostname or ""
        with contextlib.suppress(ValueError):
            hosts.append(ipaddress.ip_address(host))
    kinds = {
        "loopback": any(h.is_loopback for h in hosts),
        "private": any(h.is_private and not h.is_loopback for h in hosts),
        "link-local": any(h.is_link_local for h in hosts),
        "multicast": any(h.is_multicast for h in hosts),
        "unspecified": any(h.is_unspecified for h in hosts),
        "mapped": any(isinstance(h, ipaddress.IPv6Address) and h.ipv4_mapped for h in hosts),
        "6to4": any(isinstance(h, ipaddress.IPv6Address) and h.sixtofour for h in hosts),
    }
    assert all(kinds.values()), kinds
