"""The supervisor of ``fastsvd serve`` and its workers' exit codes, with real processes: a
worker that exits with a fatal code (weights missing, does not fit this machine) stops the
service with one line saying why and no restart; one whose GPU failed is restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fastsvd.serve import FATAL_EXITS
from tests.objectstore import free_port
from tests.support.servers import PYTHONPATH, ROOT, wait_for

pytestmark = pytest.mark.process  # starts server processes


def serve(tmp_path: Path, error: str) -> subprocess.Popen[str]:
    """``fastsvd serve`` with one worker whose model fails to load with ``error``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTSVD_")}
    env.update(
        FASTSVD_DATA_DIR=str(tmp_path / "data"),
        FASTSVD_PORT=str(free_port()),
        FASTSVD_WORKERS="1",
        FASTSVD_RUNNER="tests.fakes.load_fails:Runner",
        FAKE_LOAD_ERROR=error,
        FAKE_STARTS=str(tmp_path / "starts"),
        PYTHONPATH=PYTHONPATH,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "fastsvd.cli", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def starts(tmp_path: Path) -> int:
    path = tmp_path / "starts"
    return len(path.read_text().splitlines()) if path.exists() else 0


FATAL = {  # the fake's error -> the service's line (FATAL_EXITS)
    "model not available": "a worker could not load its models",
    "does not fit": "a worker cannot run on this machine as set up",
}


def test_a_worker_exiting_with_a_fatal_code_stops_the_service_saying_why(tmp_path: Path) -> None:
    assert set(FATAL.values()) == {m.partition(" (")[0] for m in FATAL_EXITS.values()}
    # both codes at once, each a service of its own
    processes = {error: serve(tmp_path / str(i), error) for i, error in enumerate(FATAL)}
    for i, (error, process) in enumerate(processes.items()):
        try:  # a restart would be a second start
            stopped = lambda: process.poll() is not None or starts(tmp_path / str(i)) > 1  # noqa: E731, B023
            wait_for(stopped, "the service's stop or the worker's restart")
            assert starts(tmp_path / str(i)) == 1, "restarted"
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
        assert process.returncode == 1, err
        assert "Traceback" not in out + err
        assert "restarting" not in out + err
        assert f"error: the fake model's load failed on purpose: {error}" in err  # the worker's
        assert err.strip().splitlines()[-1].startswith(f"error: {FATAL[error]}")  # the service's


def test_a_worker_whose_gpu_failed_is_restarted(tmp_path: Path) -> None:
    process = serve(tmp_path, "gpu fault")
    try:
        restarted = lambda: starts(tmp_path) >= 2 or process.poll() is not None  # noqa: E731
        wait_for(restarted, "the worker's restart or the service's stop")
        assert process.poll() is None  # the service goes on
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert "worker 0: its GPU failed; restarting" in err
    assert "Traceback" not in out + err
