"""The prepared GPU run (``bench/gpu.py --all``) end to end on the CPU with the tiny models, so
it cannot rot: it finishes, and its JSON has every field the GPU run fills."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_suite  # noqa: E402

# levels of 255 per pixel, compiled against eager: 0 with dynamo's eager backend (inductor may
# reorder float sums and flip a rounding)
TOLERANCE = 1


def keys(value: object, prefix: str = "") -> set[str]:
    """Every key path in a JSON value, lists' items left out."""
    if not isinstance(value, dict):
        return set()
    found = set()
    for key, item in value.items():
        found.add(prefix + key)
        found |= keys(item, prefix + key + ".")
    return found


@pytest.mark.slow
def test_the_device_command_runs_on_the_cpu_and_fills_every_field(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--all", "--models", "tiny",
               "--size", "64x64", "--steps", "4", "--repeats", "1", "--first-frame-steps", "2",
               "--compile-backend", "eager", "--out", str(tmp_path),
               # channels_last and fuse_qkv: lossless eager (test_optimize.py); their compiled
               # re-trace costs a minute here and only means something on the GPU
               "--optimizations", "low_memory,fp8", "--eager-levels",
               # the restart probe repeats the cold compile in a new process (a minute here);
               # on the device a failing probe is recorded as skipped, not fatal to the run
               "--skip", "start_to_ready",
               "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "gpu.json").read_text())
    assert keys(record) == keys(gpu_suite.empty_record()) | {f"meta.{k}" for k in record["meta"]}
    assert record["skipped"] == ["start_to_ready (--skip)"]
    measured = {**record["configs"], **record["levels"]}
    # fp8 needs a CUDA GPU; everything else asked for ran, and the lossless ones stayed lossless
    unmeasured = {n: e["status"] for n, e in measured.items() if e["status"] != "measured"}
    assert unmeasured == {
        "fastsvd_compiled_fp8": "failed",
        "fastsvd_compiled_channels_last": "not_requested",
        "fastsvd_compiled_fuse_qkv": "not_requested",
    }
    assert "CUDA" in record["configs"]["fastsvd_compiled_fp8"]["reason"]
    for name in ("fastsvd_eager", "fastsvd_compiled", "stock_compiled"):
        assert measured[name]["deviation_from_stock"]["max"] <= 1, name
    assert all(e["status"] == "measured" for e in record["decode_chunks"].values())
    # compiled (warm-up: 2-step requests) then 4-step requests of every level, one size: no graph
    # break, no new graph, and each level's frames those of the same level run eagerly
    compiled = record["compile"]
    assert compiled["graph_breaks"] == 0
    assert compiled["recompiles_after_warm_up"] == 0
    for level, entry in record["levels"].items():
        assert entry["deviation_from_eager"]["max"] <= TOLERANCE, level
    # the few-step family: its compiled run against its eager one; no guidance halves the U-Net
    few = record["configs"]
    assert few["few_step_compiled"]["deviation_from_eager"]["max"] <= TOLERANCE
    assert few["few_step_eager"]["unet_tflops_per_s"] is not None
    assert "| fastsvd_compiled |" in (tmp_path / "gpu.md").read_text()
