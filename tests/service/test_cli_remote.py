"""`fastsvd submit | status | result | cancel | watch` and `generate --server` against a real
server process on loopback (fake model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from PIL import Image

from tests.objectstore import free_port
from tests.support.bodies import SMALL_ARGS
from tests.support.servers import PYTHONPATH, ROOT, Server, start_server, stop_server

pytestmark = pytest.mark.process  # starts server processes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("cli"))
    try:
        yield running
    finally:
        stop_server(running)


def fastsvd(
    server: Server | None, *args: str, cwd: Path | None = None, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    if server is not None:
        env |= {"FASTSVD_URL": server.url, "FASTSVD_KEY": key or server.key}
    return subprocess.run(
        [sys.executable, "-m", "fastsvd.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or ROOT,
        timeout=120,
        check=False,
    )


def frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_submit_watch_status_and_result(server: Server, tmp_path: Path) -> None:
    submitted = fastsvd(server, "submit", "a rocket", "--seed", "21", *SMALL_ARGS)
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.strip()
    out = tmp_path / "watched.mp4"
    watched = fastsvd(server, "watch", request_id, "-o", str(out))
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.strip() == f"wrote {out}  seed=21"
    assert frames(out) == 25
    status = fastsvd(server, "status", request_id, "--logs")
    assert status.stdout.startswith("completed in ")
    assert "  video: step 3/3" in status.stdout
    as_json = json.loads(fastsvd(server, "status", request_id, "--json").stdout)
    assert as_json["status"] == "Completed"
    assert as_json["error"] is None
    result = json.loads(fastsvd(server, "result", request_id, "--json").stdout)
    assert result["seed"] == 21
    assert result["video"]["file_size"] == out.stat().st_size


def test_generate_on_a_server(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "remote.mp4"
    got = fastsvd(server, "generate", "a boat", "--server", server.url, "--seed", "4", *SMALL_ARGS,
                  "-o", str(out), "--json")  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["seed"] == 4
    assert frames(out) == 25
    picture = tmp_path / "green.png"
    Image.new("RGB", (64, 64), (0, 200, 0)).save(picture)
    from_image = fastsvd(server, "generate", "--image", str(picture), "--server", server.url,
                         *SMALL_ARGS, "-q", cwd=tmp_path)  # fmt: skip
    assert from_image.returncode == 0, from_image.stderr
    written = Path(from_image.stdout.split()[1])
    assert written.parent == tmp_path
    assert frames(written) == 25


def test_cancel_a_running_request(server: Server) -> None:
    request_id = fastsvd(server, "submit", "slow", *SMALL_ARGS[:2], "--steps", "50").stdout.strip()
    cancelled = fastsvd(server, "cancel", request_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == "cancellation requested"
    watched = fastsvd(server, "watch", request_id, "-q")
    assert watched.returncode == 1
    assert watched.stderr.strip() == "error: cancelled: Request cancelled"
    again = fastsvd(server, "cancel", request_id)
    assert (again.returncode, again.stdout.strip()) == (1, "already completed")
    result = fastsvd(server, "result", request_id)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: Request cancelled"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["submit", "x", "--video-size", "100x64"], 2, "error: video_size"),  # checked here
        (["submit", "x", "--steps", "many"], 2, "error: steps"),
        (["submit", ""], 2, "error: prompt"),  # checked by the server
        (["status", "00000000-0000-0000-0000-000000000000"], 1, "error: Request "),
    ],
)
def test_errors_are_one_line(server: Server, args: list[str], code: int, message: str) -> None:
    got = fastsvd(server, *args)
    assert got.returncode == code, got.stderr
    assert got.stderr.startswith(message)
    assert got.stderr.count("\n") == 1  # one line, no traceback


def test_a_wrong_key_and_no_server_are_one_line(server: Server) -> None:
    wrong = fastsvd(server, "submit", "x", key="nobody:wrong")
    assert wrong.returncode == 1
    assert wrong.stderr == "error: the server refused the key (set --key or FASTSVD_KEY)\n"
    nowhere = fastsvd(None, "status", "abc", "--url", f"http://127.0.0.1:{free_port()}")
    assert nowhere.returncode == 1
    assert nowhere.stderr.startswith("error: cannot reach the server at http://127.0.0.1:")
    assert nowhere.stderr.count("\n") == 1
