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

from tests.support.servers import Server

pytestmark = pytest.mark.process  # starts server processes

JS = Path(__file__).resolve().parents[1] / "js"
# each family's text-to-video and image-to-video endpoints and its most steps, as client.mjs
# reads them
FAMILIES = {
    "20-step": {},
    "few-step": {
        "FASTSVD_T2V": "fal-ai/fast-svd-lcm/text-to-video",
        "FASTSVD_I2V": "fal-ai/fast-svd-lcm",
        "FASTSVD_MOST_STEPS": "20",
        "FASTSVD_STEPS_MAX": "20",
    },
}
family = pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES)


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


def run_js(
    node_client: Path,
    server: Server,
    scenario: str,
    mode: str = "middleware",
    family: dict[str, str] | None = None,
) -> Any:
    """Run one scenario of client.mjs; ``mode`` "proxy" configures the client with proxyUrl;
    ``family``: the endpoints it drives (default: the 20-step ones)."""
    env = {"FASTSVD_URL": server.url, "FASTSVD_KEY": server.key, "FASTSVD_MODE": mode}
    env |= family or {}
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


@family
def test_subscribe_polling_with_logs(
    node_client: Path, server: Server, family: dict[str, str]
) -> None:
    got = run_js(node_client, server, "subscribe", family=family)
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


@family
def test_cancel(node_client: Path, server: Server, family: dict[str, str]) -> None:
    got = run_js(node_client, server, "cancel", family=family)
    assert got["status"]["error_type"] == "cancelled"
    assert got["error"]["status"] == 499


@family
def test_cancel_while_queued(node_client: Path, server: Server, family: dict[str, str]) -> None:
    got = run_js(node_client, server, "cancelQueued", family=family)
    assert got["queued"]["status"] == "IN_QUEUE"
    assert got["final"]["status"] == "COMPLETED"
    assert got["final"]["error_type"] == "cancelled"


@pytest.mark.parametrize(
    ("mode", "family"),
    [("middleware", {}), ("proxy", {}), ("middleware", FAMILIES["few-step"])],
    ids=["middleware", "proxy", "few-step"],
)
def test_storage_upload_then_image_to_video(
    node_client: Path, server: Server, mode: str, family: dict[str, str]
) -> None:
    got = run_js(node_client, server, "upload", mode, family)
    assert got["url"].startswith(f"{server.url}/files/")
    video = httpx.get(got["result"]["data"]["video"]["url"]).content
    with av.open(io.BytesIO(video)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert abs(int(frame[..., 0].mean()) - 200) < 8  # the uploaded red picture arrived


@family
def test_run_and_validation_errors(
    node_client: Path, server: Server, family: dict[str, str]
) -> None:
    assert run_js(node_client, server, "run", family=family)["data"]["seed"] == 8
    invalid = run_js(node_client, server, "invalid", family=family)
    assert invalid["thrown"]
    assert invalid["status"] == 422
    assert invalid["name"] == "ValidationError"
    assert [error["loc"] for error in invalid["fieldErrors"]] == [
        ["body", "fps"],
        ["body", "steps"],
    ]


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
