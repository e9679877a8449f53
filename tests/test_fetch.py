"""Fetching input URLs: redirects re-checked hop by hop, size and time capped."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fastsvd.errors import InvalidInput
from fastsvd.net import guard as netguard
from fastsvd.net.fetch import fetch


class Site:
    """A loopback HTTP server with scripted routes; records every request it sees."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.seen: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.seen.append(self.path)
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("location", self.path.split("to=", 1)[1])
                    self.end_headers()
                elif self.path == "/big":
                    self.send_response(200)
                    self.send_header("content-length", str(10_000))
                    self.end_headers()
                    self.wfile.write(b"x" * 10_000)
                elif self.path == "/slow":
                    self.send_response(200)
                    self.end_headers()
                    for _ in range(30):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.1)
                elif self.path == "/ok":
                    self.send_response(200)
                    self.send_header("content-type", "image/png")
                    self.send_header("content-length", "5")
                    self.end_headers()
                    self.wfile.write(b"hello")
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.http = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    running = Site()
    yield running
    running.close()


def test_fetches_a_file(site: Site) -> None:
    assert fetch(f"{site.url}/ok", "image_url", allow_private=True) == ("image/png", b"hello")


def test_follows_redirects_that_stay_allowed(site: Site) -> None:
    got = fetch(f"{site.url}/redirect?to={site.url}/ok", "image_url", allow_private=True)
    assert got[1] == b"hello"


@pytest.mark.parametrize(
    ("path", "message"),
    [("/big", "larger than 1,000 bytes"), ("/missing", "HTTP 404"), ("/slow", "too slow")],
)
def test_caps_and_errors_name_the_field(site: Site, path: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        fetch(f"{site.url}{path}", "image_url", allow_private=True, max_bytes=1000, timeout_s=1)
    assert caught.value.field == "image_url"


def test_redirect_to_a_blocked_address_is_refused_before_connecting(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = Site("127.0.0.2")
    try:
        # treat 127.0.0.1 as the public internet and 127.0.0.2 as an internal service
        monkeypatch.setattr(netguard, "is_public", lambda address: address == "127.0.0.1")
        start = f"{site.url}/redirect?to={blocked.url}/secret"
        with pytest.raises(InvalidInput, match="not a public address"):
            fetch(start, "image_url", allow_private=False, schemes=("http",))
        assert blocked.seen == []  # no connection reached the blocked target
    finally:
        blocked.close()


def test_plain_http_and_other_schemes_are_refused_by_default() -> None:
    for url in ("http://example.com/a.png", "file:///etc/passwd", "ftp://example.com/a"):
        with pytest.raises(InvalidInput, match="scheme"):
            fetch(url, "image_url")
