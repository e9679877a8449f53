"""The container image (Dockerfile), which no container engine builds here: its structure read
with a Dockerfile parser, and its command run as a process with its environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from dockerfile_parse import DockerfileParser

from fastsvd.settings import Settings
from tests.objectstore import free_port
from tests.support.servers import CEILING_S, PYTHONPATH, ROOT, wait_for

pytestmark = pytest.mark.process  # starts server processes

VENV = "/opt/fastsvd/.venv"  # where the image keeps its virtual environment
VOLUME = "/data"


def parsed() -> DockerfileParser:
    return DockerfileParser(path=str(ROOT / "Dockerfile"))


def instructions(stage: str | None = None) -> list[tuple[str, str]]:
    """(instruction, value) pairs, of one stage (``FROM ... AS stage``) or of all."""
    out, current = [], None
    for item in parsed().structure:
        if item["instruction"] == "FROM":
            current = item["value"].split()[-1]
        if stage is None or current == stage:
            out.append((item["instruction"], item["value"]))
    return out


def test_stages_user_port_volume_and_health_check() -> None:
    dockerfile = parsed()
    assert dockerfile.is_multistage
    stages = [v.split() for i, v in instructions() if i == "FROM"]
    assert [s[-1] for s in stages] == ["build", "runtime"]
    (cuda,) = {i: v for i, v in instructions() if i == "ARG"}.values()
    assert cuda.startswith("CUDA_IMAGE=nvidia/cuda:")
    assert "-runtime-" in cuda
    runtime = instructions("runtime")
    users = [v for i, v in runtime if i == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
    assert [v for i, v in runtime if i == "EXPOSE"] == [str(Settings().port)]
    assert any(i == "HEALTHCHECK" and "/opt/fastsvd/scripts/healthcheck" in v for i, v in runtime)
    # weights and compiled kernels live on the volume, never in a layer
    env = dockerfile.envs
    assert VOLUME in next(v for i, v in runtime if i == "VOLUME")
    assert env["HF_HOME"].startswith(VOLUME + "/")
    assert env["FASTSVD_DATA_DIR"] == VOLUME  # the compile cache is FASTSVD_DATA_DIR/compile-cache
    every = " ".join(v for _i, v in instructions()).lower()
    for download in ("huggingface-cli", "snapshot_download", "hf download", ".safetensors"):
        assert download not in every


def test_the_install_steps_are_the_projects_scripts() -> None:
    runs = [v for i, v in instructions("build") if i == "RUN"]
    assert any(v.startswith(f"./scripts/install {VENV} runtime") for v in runs)
    # and `make install` (so CI) runs the same script
    makefile = (ROOT / "Makefile").read_text()
    assert "./scripts/install $(VENV) dev" in makefile
    copied = " ".join(v for i, v in instructions() if i == "COPY")
    for script in ("scripts/install", "scripts/install-torch", "scripts/healthcheck"):
        assert os.access(ROOT / script, os.X_OK), script
        assert script.split("/")[0] in copied
    assert "constraints.txt" in copied  # scripts/install pins with it


def test_the_images_command_serves_and_passes_its_health_check(tmp_path: Path) -> None:
    dockerfile = parsed()
    runtime = instructions("runtime")
    entrypoint = next(v for i, v in runtime if i == "ENTRYPOINT")
    command = next(v for i, v in runtime if i == "CMD")
    argv = json.loads(entrypoint) + json.loads(command)
    assert argv[0] == f"{VENV}/bin/fastsvd"
    argv[0] = str(
        Path(sys.executable).parent / "fastsvd"
    )  # this checkout's, installed the same way
    port = free_port()
    env = {
        k: v.replace(VOLUME, str(tmp_path), 1) for k, v in dockerfile.envs.items() if k != "PATH"
    }
    env.update(FASTSVD_HOST="127.0.0.1", FASTSVD_PORT=str(port))  # loopback only, in tests
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            argv,
            env={
                "PATH": os.environ["PATH"],
                "HOME": str(tmp_path),
                "PYTHONPATH": PYTHONPATH,
                **env,
            },
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    health = [sys.executable, str(ROOT / "scripts" / "healthcheck"), str(process.pid)]
    check_env = {**os.environ, "FASTSVD_PORT": str(port)}
    try:

        def answers() -> bool:
            assert process.poll() is None, log.read_text()
            return subprocess.run(health, env=check_env, capture_output=True).returncode == 0

        wait_for(answers, "the image's command to answer its health check")
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
        assert (tmp_path / "first-key").exists()  # the data folder is the volume
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(CEILING_S)
    assert code == 0
    failed = subprocess.run([*health[:2], str(os.getpid())], env=check_env, capture_output=True)
    assert failed.returncode == 1  # nothing answers now: unhealthy
