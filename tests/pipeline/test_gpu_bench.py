"""The GPU device run on the CPU with the tiny models, so that it cannot rot: both calls'
commands exactly as docs/performance.md gives them (models and sizes aside: ``--models tiny``),
and one of them stopped by SIGTERM part-way, which must leave the figures measured before it.
The three processes run side by side."""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_models  # noqa: E402
from fastsvd.pipeline.device import Placement  # noqa: E402

# levels of 255 per pixel: compiled against eager (0 with dynamo's eager backend, which a CPU
# run uses), fastsvd against stock diffusers (0 in fp32)
TOLERANCE = 1
LEVELS = ("minimum", "medium", "high")
GPU_ONLY = ("sync_count", "stock_compiled", "optimization_channels_last",
            "optimization_fuse_qkv", "optimization_fp8", "start_to_ready")  # fmt: skip


def device_commands() -> dict[int, list[str]]:
    """bench/gpu.py's arguments in each device command of docs/performance.md, by call."""
    found = {}
    for line in (ROOT / "docs" / "performance.md").read_text().splitlines():
        _, script, rest = line.partition("python3 bench/gpu.py ")
        if script:
            args = shlex.split(rest.partition("2>&1")[0])
            found[int(args[args.index("--call") + 1])] = args
    return found


def start(args: list[str], out: Path, **kwargs: Any) -> subprocess.Popen[str]:
    command = [sys.executable, str(ROOT / "bench" / "gpu.py")]
    command += [arg.replace("$OUT", str(out)) for arg in args] + ["--models", "tiny"]
    return subprocess.Popen(command, text=True, stderr=subprocess.STDOUT, **kwargs)


@contextlib.contextmanager
def ending(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``process``, killed on the way out if it still runs, its pipe closed."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def load(out: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((out / "gpu.json").read_text())
    return record


def statuses(record: dict[str, Any]) -> dict[str, str]:
    return {name: step["status"] for name, step in record["steps"].items()}


def runs(record: dict[str, Any]) -> dict[str, int]:
    return {name: config["runs"] for name, config in record["configs"].items()}


@pytest.mark.slow
@pytest.mark.timeout(600)  # a loaded machine: the processes end when their steps do
def test_both_device_calls_run_on_the_cpu_and_sigterm_keeps_what_was_measured(
    tmp_path: Path,
) -> None:
    commands = device_commands()
    assert sorted(commands) == [1, 2]
    outs = {name: tmp_path / name for name in ("call1", "call2", "stopped")}
    with contextlib.ExitStack() as stack:
        logs = {
            n: stack.enter_context(open(tmp_path / f"{n}.log", "w")) for n in ("call1", "call2")
        }
        call1 = stack.enter_context(ending(start(commands[1], outs["call1"], stdout=logs["call1"])))
        call2 = stack.enter_context(ending(start(commands[2], outs["call2"], stdout=logs["call2"])))
        # call 1 again, stopped once its first timed request is printed
        stopped = stack.enter_context(
            ending(start(commands[1], outs["stopped"], stdout=subprocess.PIPE))
        )
        assert stopped.stdout is not None
        printed = []
        for line in stopped.stdout:
            printed.append(line)
            if line.startswith("row "):
                stopped.send_signal(signal.SIGTERM)
                break
        printed += stopped.stdout.readlines()
        assert stopped.wait(timeout=60) == 128 + signal.SIGTERM, "".join(printed)[-3000:]
        for name, process in (("call1", call1), ("call2", call2)):
            process.wait()
            assert process.returncode == 0, (tmp_path / f"{name}.log").read_text()[-3000:]

    # stopped: every step finished before the signal is recorded, and every row printed
    record = load(outs["stopped"])
    assert record["stopped"] == "SIGTERM"
    assert list(statuses(record).items())[:4] == [
        ("build", "done"), ("flops", "done"),
        ("warm_up", "skipped"),  # a GPU's warm-up; on a CPU left out
        ("default_eager", "interrupted"),
    ]  # fmt: skip
    assert set(list(statuses(record).values())[4:]) == {"pending"}
    rows = [f"{r['config']} #{r['run']}" for r in record["rows"]]
    assert rows == [
        line.split(":")[0].removeprefix("row ") for line in printed if line.startswith("row ")
    ]
    assert rows[0] == "stock_eager #1"
    assert "stopped early: SIGTERM" in (outs["stopped"] / "gpu.md").read_text()

    # call 1, eager: stock and fastsvd's frames the same; GPU timings alone skipped
    record = load(outs["call1"])
    assert record["preflight"]["ok"]
    assert statuses(record) == {
        "build": "done", "flops": "done", "warm_up": "skipped", "default_eager": "done",
        "few_step_eager": "done", "few_step_eager_no_guidance": "skipped",
        "levels_eager": "skipped", "chained_few_step": "skipped",
    }  # fmt: skip
    assert runs(record) == {"stock_eager": 1, "fastsvd_eager": 1, "few_step_eager": 1}
    configs = record["configs"]
    assert configs["fastsvd_eager"]["deviations"]["stock_eager"]["max"] <= TOLERANCE
    assert configs["fastsvd_eager"]["unet_tflops_per_s"] > 0
    assert "| fastsvd_eager | 1 |" in (outs["call1"] / "gpu.md").read_text()

    # call 2, compiled: no graph break, no new graph in any timed request, each compiled
    # request's frames those of the same request run eagerly; GPU-only steps skipped
    record = load(outs["call2"])
    status = statuses(record)
    assert {n: s for n, s in status.items() if n not in GPU_ONLY} == dict.fromkeys(
        ["build", "flops", "compiled", "levels_compiled", "decode_chunks", "few_step_compiled",
         "compiled_vs_eager", "memory_24gb"], "done",
    )  # fmt: skip
    assert {status[n] for n in GPU_ONLY} == {"skipped"}
    compiled = ["fastsvd_compiled", *(f"deep_cache_{lv}_compiled" for lv in LEVELS),
                "few_step_compiled"]  # fmt: skip
    assert runs(record) == dict.fromkeys([*compiled, "plan_24gb_default", "plan_24gb_few_step"], 1)
    facts = record["facts"]
    assert facts["compile"]["fastsvd_compiled"]["new_graphs"] > 0
    for config in compiled:
        assert facts["compile"][config]["graph_breaks"] == 0, config
        assert facts["compile"][config]["new_graphs_in_timed_runs"] == 0, config
        assert record["configs"][config]["deviations"]["eager"]["max"] <= TOLERANCE, config
    chunks = facts["decode_chunks"]
    assert list(chunks) == [f"{n} frames a call" for n in (25, 13, 8, 5, 1)]
    assert chunks["25 frames a call"]["max_dev"] == 0
    # a CPU has no per-process memory fraction: the plan runs there without one
    assert facts["memory_24gb"]["plan"]["device"] == "cpu"
    assert facts["memory_24gb"]["plan"]["fraction"] is None


def test_the_full_size_models_build_in_bf16_from_the_start() -> None:
    """The device run's full-size build, on the meta device (no memory): every weight is bf16,
    and the default dtype it creates them under is restored."""
    pipe = gpu_models.build("full", Placement(torch.device("meta"), torch.bfloat16))
    modules = [
        m for p in pipe.pipes() for m in p.components.values() if isinstance(m, torch.nn.Module)
    ]
    assert {p.dtype for m in modules for p in m.parameters()} == {torch.bfloat16}
    assert sum(p.numel() for m in set(modules) for p in m.parameters()) > 9e9  # both families
    assert torch.get_default_dtype() == torch.float32
