"""``fastsvd doctor`` and a first start without weights: no GPU, no weights, no network (an
empty Hugging Face cache, ``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastsvd.cli import main
from tests.support.commands import run_cli
from tests.support.servers import ROOT

MODELS = 4  # the default preset's: SVD-XT 1.1, SDXL base, AnimateLCM-SVD-xt, SDXL-Lightning


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTSVD_", "HF_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),  # empty: no weights anywhere
        FASTSVD_DATA_DIR=str(tmp_path / "data"),
    )
    for name in [k for k in os.environ if k.startswith(("FASTSVD_", "HF_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.mark.model  # doctor probes the device through torch
def test_doctor_without_weights_lists_each_download_and_exits_1(offline: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["doctor"], env={"FASTSVD_GPU_MEMORY_GB": "24"})
    assert result.exit_code == 1, result.output
    out = result.output
    missing = [line for line in out.splitlines() if line.strip().startswith("missing:")]
    assert len(missing) == MODELS
    assert all("hf download " in line for line in missing)
    assert "--include" in missing[0]  # the fp16 files and configs only
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in missing[0]
    assert "HF_TOKEN: not set" in out
    assert "is gated: accept its licence at https://huggingface.co/" in out
    assert "fal-ai/fast-svd: 1 missing" in out
    assert "memory plan: offload-first-frame, decode chunk 8" in out  # a 24 GB card's
    assert "compile cache: none yet" in out


@pytest.mark.model
def test_doctor_on_the_tiny_preset_finds_nothing_missing(offline: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["doctor", "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert "missing:" not in result.output


@pytest.mark.process
def test_serve_without_weights_offline_stops_with_one_line_per_model(
    offline: dict[str, str],
) -> None:
    started = time.monotonic()
    done = run_cli("serve", "--port", "0", env=offline, cwd=ROOT)
    assert time.monotonic() - started < 60
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if "hf download " in line]
    assert len(lines) == MODELS
    assert "fastsvd doctor" in done.stderr
    assert "restarting" not in done.stderr + done.stdout  # no worker ever started
