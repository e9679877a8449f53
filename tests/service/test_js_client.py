"""The official JS client, ``@fal-ai/client`` from npm, run with Node.js against a real server:
pointed at it by a request middleware, and by ``proxyUrl`` alone (fal's server-proxy mode)."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from tests.service.conftest import Server

JS = Path(__file__).resolve().parents[1] / "js"


@pytest.fixture(scope="module")
def node_client() -> Path:
    """tests/js with @fal-ai/client installed from the npm registry (pinned by the lock file)."""
    if not (JS / "node_modules" / "@fal-ai" / "client").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=JS,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return JS


def run_js(node_client: Path, server: Server, scenario: str, mode: str = "middleware") -> Any:
    """Run one scenario of client.mjs; ``mode`` "proxy" configures the client with proxyUrl."""
    env = {"FASTSVD_URL": server.url, "FASTSVD_KEY": server.key, "FASTSVD_MODE": mode}
    out = subprocess.run(
        ["node", "client.mjs", scenario],
        cwd=node_client,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_subscribe_polling_with_logs(node_client: Path, server: Server) -> None:
    got = run_js(node_client, server, "subscribe")
    assert got["result"]["data"]["seed"] == 4
    assert got["result"]["requestId"]  # read from the x-fal-request-id header
    assert got["statuses"]
    assert set(got["statuses"]) <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    logs = [line["message"] for line in got["last"]["logs"]]
    assert logs[0] == "seed 4"
    assert got["result"]["data"]["video"]["content_type"] == "video/mp4"


def test_subscribe_streaming_uses_the_sse_endpoint(node_client: Path, server: Server) -> None:
    got = run_js(node_client, server, "stream")
    assert got["result"]["data"]["video"]["url"].startswith(server.url)
    assert got["statuses"]


def test_submit_status_result(node_client: Path, server: Server) -> None:
    got = run_js(node_client, server, "queue")
    assert got["status"]["status"] == "COMPLETED"
    assert got["status"]["logs"][-1]["message"] == "video: step 3/3"
    assert got["result"]["requestId"] == got["request_id"]


def test_cancel(node_client: Path, server: Server) -> None:
    got = run_js(node_client, server, "cancel")
    assert got["status"]["error_type"] == "cancelled"
    assert got["error"]["status"] == 499


@pytest.mark.parametrize("mode", ["middleware", "proxy"])
def test_storage_upload_then_image_to_video(node_client: Path, server: Server, mode: str) -> None:
    got = run_js(node_client, server, "upload", mode)
    assert got["url"].startswith(f"{server.url}/files/")
    video = httpx.get(got["result"]["data"]["video"]["url"]).content
    with av.open(io.BytesIO(video)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert abs(int(frame[..., 0].mean()) - 200) < 8  # the uploaded red picture arrived


def test_run_and_validation_errors(node_client: Path, server: Server) -> None:
    assert run_js(node_client, server, "run")["data"]["seed"] == 8
    invalid = run_js(node_client, server, "invalid")
    assert invalid["thrown"]
    assert invalid["status"] == 422
    assert invalid["name"] == "ValidationError"
    assert invalid["fieldErrors"][0]["loc"] == ["body", "fps"]


# --- proxyUrl: every call goes to /api/fal/proxy with its fal URL in x-fal-target-url ------------


def test_proxy_subscribe_polling_and_streaming(node_client: Path, server: Server) -> None:
    polled = run_js(node_client, server, "subscribe", "proxy")
    assert polled["result"]["data"]["seed"] == 4
    assert polled["result"]["requestId"]
    assert polled["last"]["logs"][0]["message"] == "seed 4"
    streamed = run_js(node_client, server, "stream", "proxy")
    assert streamed["result"]["data"]["video"]["url"].startswith(server.url)
    assert streamed["statuses"]


def test_proxy_cancel_and_synchronous_run(node_client: Path, server: Server) -> None:
    cancelled = run_js(node_client, server, "cancel", "proxy")
    assert cancelled["status"]["error_type"] == "cancelled"
    assert cancelled["error"]["status"] == 499
    assert run_js(node_client, server, "run", "proxy")["data"]["seed"] == 8
