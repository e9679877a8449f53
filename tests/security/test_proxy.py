"""The fal proxy route (``/api/fal/proxy``) is no open proxy: it serves only fastsvd's own routes
named by a target on fal's hosts, refuses every other target with a 4xx, and never connects
anywhere.

The API runs in this process (ASGI transport, no socket of its own), so two witnesses prove "no
connection": a recorder of every address a socket tried and every name resolved, and a TCP
listener on 127.0.0.2 and [::1] that some targets point at.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fastsvd.api.app import create_app
from fastsvd.api.proxy import PROXY_PATH, resolve, routes
from fastsvd.endpoints import ENDPOINTS
from fastsvd.errors import ProxyRefused, http_status
from fastsvd.services import Services
from fastsvd.settings import Settings
from tests.security.test_ssrf import Listener

ID = "0b7f3c1e-2a4d-4e8f-9c6b-5d1a2e3f4a5b"


@pytest.mark.parametrize(
    ("method", "target", "path", "query"),
    [
        (
            "POST",
            "https://queue.fal.run/fal-ai/fast-svd/text-to-video?fal_webhook=https%3A%2F%2Fx.io",
            "/fal-ai/fast-svd/text-to-video",
            "fal_webhook=https%3A%2F%2Fx.io",
        ),
        ("POST", "https://queue.fal.run/fal-ai/fast-svd", "/fal-ai/fast-svd", ""),
        (
            "GET",
            f"https://queue.fal.run/fal-ai/fast-svd/requests/{ID}/status?logs=1",
            f"/fal-ai/fast-svd/requests/{ID}/status",
            "logs=1",
        ),
        (
            "GET",
            f"https://queue.fal.run/fal-ai/fast-svd/requests/{ID}/status/stream?logs=0",
            f"/fal-ai/fast-svd/requests/{ID}/status/stream",
            "logs=0",
        ),
        ("GET", f"https://queue.fal.run/fal-ai/fast-svd/requests/{ID}", None, ""),
        ("PUT", f"https://queue.fal.run/fal-ai/fast-svd/requests/{ID}/cancel", None, ""),
        (
            "POST",
            "https://fal.run/fal-ai/fast-svd/text-to-video",
            "/run/fal-ai/fast-svd/text-to-video",
            "",
        ),
        ("POST", "https://fal.run/fal-ai/fast-svd", "/run/fal-ai/fast-svd", ""),
        (
            "POST",
            "https://rest.alpha.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
            "/storage/upload/initiate",
            "storage_type=fal-cdn-v3",
        ),
        ("POST", "https://rest.fal.ai/storage/upload/initiate", "/storage/upload/initiate", ""),
        ("POST", "https://QUEUE.FAL.RUN:443/fal-ai/fast-svd", "/fal-ai/fast-svd", ""),
    ],
)
def test_targets_on_fals_hosts_map_onto_fastsvds_routes(
    method: str, target: str, path: str | None, query: str
) -> None:
    expected = path or target.split("fal.run", 1)[1].split("?")[0]
    assert resolve(routes(ENDPOINTS), method, [target.encode()]) == (expected, query)


def refusals(port: int) -> list[tuple[str, str | None, int]]:
    """(method, target, status): each refused. ``port`` is the listener's."""
    q = "https://queue.fal.run"
    return [
        ("POST", None, 400),  # no header
        ("POST", "fal-ai/fast-svd", 400),  # not absolute
        ("POST", "queue.fal.run/fal-ai/fast-svd", 400),
        ("POST", "file:///etc/passwd", 400),
        ("POST", "https://[::1/fal-ai/fast-svd", 400),
        ("POST", f"{q}:99999/fal-ai/fast-svd", 400),
        ("POST", f"{q}/fal-ai/fast-svd#part", 400),
        ("POST", f"{q}/fal-ai/fast svd", 400),
        ("POST", "http://queue.fal.run/fal-ai/fast-svd", 403),  # not https
        ("POST", "gopher://queue.fal.run/fal-ai/fast-svd", 403),
        ("POST", "https://example.com/fal-ai/fast-svd", 403),  # not fal's
        ("POST", "https://queue.fal.run.example.com/fal-ai/fast-svd", 403),
        ("POST", "https://evilfal.run/fal-ai/fast-svd", 403),
        ("POST", "https://queue.fal.run./fal-ai/fast-svd", 403),
        ("POST", f"https://127.0.0.2:{port}/fal-ai/fast-svd", 403),
        ("POST", f"https://[::1]:{port}/fal-ai/fast-svd", 403),
        ("GET", "https://169.254.169.254/latest/meta-data/", 403),
        ("POST", f"https://queue.fal.run@127.0.0.2:{port}/fal-ai/fast-svd", 403),  # user info
        ("POST", "https://user:secret@queue.fal.run/fal-ai/fast-svd", 403),
        ("POST", f"{q}:8443/fal-ai/fast-svd", 403),  # a port
        ("POST", f"{q}:0443/fal-ai/fast-svd", 403),
        ("GET", f"{q}/admin/keys", 403),  # fal's host, not a route fastsvd serves through it
        ("POST", f"{q}/admin/keys", 403),
        ("GET", f"{q}/fal-ai/fast-svd/../../admin/keys", 403),
        ("PUT", f"{q}/fal-ai/fast-svd/requests/%2e%2e/cancel", 403),
        ("GET", f"{q}//fal-ai/fast-svd/requests/{ID}", 403),
        ("GET", f"{q}/fal-ai/fast-svd/requests", 403),
        ("POST", f"{q}/fal-ai/flux/dev", 403),  # another model
        ("GET", f"{q}/files/abc/video.mp4", 403),
        ("GET", f"{q}/health", 403),
        ("POST", f"{q}/fal-ai/fast-svd/requests/{ID}/cancel", 403),  # wrong method
        ("GET", "https://fal.run/fal-ai/fast-svd/requests/x", 403),  # wrong host for it
        ("POST", "https://rest.fal.ai/storage/auth/token", 403),
        ("POST", "https://v3.fal.media/files/upload", 403),
        ("POST", "https://queue.falrun.com/fal-ai/fast-svd", 403),
        ("DELETE", f"{q}/fal-ai/fast-svd/requests/{ID}", 405),
        ("PATCH", f"{q}/fal-ai/fast-svd", 405),
    ]


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    running = Services.from_settings(Settings.from_env({"FASTSVD_DATA_DIR": str(tmp_path)}))
    yield running
    running.close()


class Witness:
    """Every address a socket of this process tried to connect to, and every name resolved."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[str] = []
        real_connect, real_resolve = socket.socket.connect, socket.getaddrinfo

        def connect(sock: socket.socket, address: object) -> None:
            self.seen.append(f"connect {address}")
            real_connect(sock, address)  # type: ignore[arg-type]

        def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
            self.seen.append(f"resolve {host}")
            return real_resolve(host, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def call(services: Services, *requests: tuple[str, dict[str, str], object]) -> list[httpx.Response]:
    """Send (method, headers, json body) requests to the proxy route of an in-process app."""

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://fastsvd") as client:
            return [
                await client.request(method, PROXY_PATH, headers=headers, json=body)
                for method, headers, body in requests
            ]

    return asyncio.run(scenario())


def test_other_targets_are_refused_without_connecting_anywhere(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, _info = services.keys.create("user")
    listener = Listener()
    try:
        cases = refusals(listener.port)
        witness = Witness(monkeypatch)
        answers = call(
            services,
            *[
                (
                    method,
                    {"authorization": f"Key {key}"}
                    | ({"x-fal-target-url": target} if target is not None else {}),
                    {"prompt": "a"},
                )
                for method, target, _status in cases
            ],
        )
        monkeypatch.undo()
    finally:
        listener.close()
    for (method, target, status), answer in zip(cases, answers, strict=True):
        assert answer.status_code == status, (method, target, answer.text)
        detail = answer.json()["detail"]
        assert isinstance(detail, str)
        assert "x-fal-target-url" in detail or "does not serve" in detail or method in detail
    assert answers[-1].headers["allow"] == "GET, POST, PUT"
    assert witness.seen == []
    assert listener.accepted == 0
    assert services.jobs.recent(None, 10) == []  # nothing was queued


def test_several_target_headers_are_refused(services: Services) -> None:
    target = "https://queue.fal.run/fal-ai/fast-svd/text-to-video"

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://fastsvd") as client:
            headers = [("x-fal-target-url", target), ("x-fal-target-url", target)]
            return await client.post(PROXY_PATH, headers=headers, json={"prompt": "a"})

    answer = asyncio.run(scenario())
    assert answer.status_code == 400
    assert "several" in answer.json()["detail"]


def test_proxied_calls_need_the_callers_own_key(services: Services) -> None:
    key, _info = services.keys.create("user")
    submit = {"x-fal-target-url": "https://queue.fal.run/fal-ai/fast-svd/text-to-video"}
    missing, wrong, right = call(
        services,
        ("POST", submit, {"prompt": "a"}),
        ("POST", submit | {"authorization": "Key nobody:nothing"}, {"prompt": "a"}),
        ("POST", submit | {"authorization": f"Key {key}"}, {"prompt": "a", "seed": 3}),
    )
    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert right.status_code == 200, right.text
    submitted = right.json()
    # the URLs in the answer are fastsvd's own, not fal's
    assert submitted["status_url"].startswith("http://fastsvd/fal-ai/fast-svd/requests/")
    status_url = submitted["status_url"].replace("http://fastsvd", "https://queue.fal.run")
    (status,) = call(
        services, ("GET", {"x-fal-target-url": status_url, "authorization": f"Key {key}"}, None)
    )
    assert status.status_code == 202
    assert status.json()["status"] == "IN_QUEUE"


def test_a_refusal_names_what_was_asked() -> None:
    with pytest.raises(ProxyRefused) as caught:
        resolve(routes(ENDPOINTS), "GET", [b"https://queue.fal.run/openapi.json"])
    assert http_status(caught.value) == 403
    assert caught.value.message == "fastsvd does not serve GET /openapi.json on queue.fal.run"
