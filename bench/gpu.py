"""The GPU device run: fastsvd against stock diffusers at full size, in two short calls that
return the most valuable figures first (docs/performance.md, "GPU", has the exact commands).

    python3 bench/gpu.py --call 1 --budget-s 240 --out $OUT    # eager: the default request,
                                                               # stock vs fastsvd; few-step
    python3 bench/gpu.py --call 2 --budget-s 240 --out $OUT    # compiled: cold compile, every
                                                               # deep_cache level, decode
                                                               # chunks, the 24 GB plan
    .venv/bin/python bench/gpu.py --call 1 --models tiny       # anywhere: the same code on the
                                                               # tiny preset (make test does)

The models are built from their real configs with random weights, directly in bf16 on the GPU
(``gpu_models.py``); nothing is downloaded. The request is fal's default (1024x576, 25 frames,
20 steps) and the few-step family's (4 steps), at the same size.

Each call starts with a preflight (imports, the pinned versions of constraints.txt, torch and
CUDA, nvidia-smi, free GPU memory) that prints one line and ends the call at once if anything is
missing. Then it runs its steps (``gpu_suite.py``) in order; each step first checks that the
budget left covers what it is estimated to need, a failing step is recorded with its error and
the run goes on, and at ``--budget-s`` (counted from the start of this program) the step in
progress is stopped; on a CPU (the dry run) the budget is not enforced. Every timed request is
printed as a ``row`` line the moment it exists, every other figure as a ``fact`` line, and
``gpu.json`` / ``gpu.md`` under ``--out`` are rewritten after each (``gpu_record.py``). SIGTERM
and SIGINT end the run the same way, with what was measured written.

Exit status: 0 every step done or skipped; 1 a step failed, or the budget ran out inside one;
3 the preflight failed; 128 + N stopped by signal N.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

from gpu_record import Record

STARTED = time.monotonic()  # the budget counts from here, the heavy imports included
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # no install needed
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# What each --models runs: fal's default request (size, steps) with the median of 2 timed runs
# at full size; a CPU-sized request, timed once, on the tiny models.
REQUESTS = {"full": ((1024, 576), 20, 2), "tiny": ((64, 64), 2, 1)}
PINS = ROOT / "constraints.txt"  # the versions the CPU tests pass with; the device carries them
OPTIONAL = {"torchao"}  # only the fp8 step needs it; the CPU install leaves it out
IMPORTS = (
    "torch",
    "numpy",
    "PIL",
    "transformers",
    "diffusers",
    "av",
    "pydantic",
    "fastsvd.pipeline.core",
    "fastsvd.runner",
)
REPORTED = ("transformers", "huggingface-hub", "numpy", "pillow")  # the device's own
FULL_SIZE_NEEDS_GIB = 40  # all four endpoints' bf16 weights (18.3 GiB) and a request's peak


class Stopped(BaseException):
    """The run was told to stop (a signal, or its budget); BaseException, so that a step's
    ``except Exception`` does not swallow it."""

    def __init__(self, why: str, code: int) -> None:
        super().__init__(why)
        self.why, self.code = why, code


class PreflightFailed(Exception):
    """Something the run needs is missing; the call ends before any step."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--call", type=int, choices=[1, 2], default=1)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=240.0,
        help="stop by then, counted from the program's start",
    )
    parser.add_argument("--out", help="folder for gpu.json and gpu.md (default: $OUT)")
    parser.add_argument("--models", choices=sorted(REQUESTS), default="full")
    parser.add_argument("--size", type=size, help="WIDTHxHEIGHT (default: the models')")
    parser.add_argument("--steps", type=int, help="the 20-step request's steps")
    parser.add_argument("--repeats", type=int, help="timed runs per configuration")
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: CUDA if visible)")
    parser.add_argument("--dtype", help="bf16, fp16, fp32 (default: bf16 on CUDA)")
    args = parser.parse_args(argv)
    default_size, default_steps, default_repeats = REQUESTS[args.models]
    args.size = args.size or default_size
    args.steps = args.steps or default_steps
    args.repeats = args.repeats or default_repeats
    return args


def size(value: str) -> tuple[int, int]:
    width, _, height = value.partition("x")
    return int(width), int(height)


def pins() -> dict[str, str]:
    """constraints.txt as {name: version}."""
    found = {}
    for line in PINS.read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if requirement:
            name, _, version = requirement.partition("==")
            found[name.strip()] = version.strip()
    return found


def nvidia_smi() -> str:
    query = "--query-gpu=name,driver_version,memory.used,memory.total"
    try:
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({type(exc).__name__})"
    return out.stdout.strip().replace("\n", "; ") or f"exit {out.returncode}"


def preflight(args: argparse.Namespace) -> dict[str, Any]:
    """Imports, versions, the GPU and its free memory; raises PreflightFailed at the first gap."""
    for module in IMPORTS:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise PreflightFailed(f"cannot import {module}: {exc}") from exc
    import torch

    from fastsvd.errors import FastSVDError
    from fastsvd.pipeline.device import choose
    from fastsvd.pipeline.quiet import quiet_libraries

    quiet_libraries()

    versions: dict[str, str | None] = {}
    for name in [*pins(), *REPORTED]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    wrong = [
        f"{n} {versions[n] or 'missing'} (pinned {v})"
        for n, v in pins().items()
        if versions[n] != v and not (n in OPTIONAL and versions[n] is None)
    ]
    if wrong:
        raise PreflightFailed(
            f"not the versions of constraints.txt: {', '.join(wrong)} "
            "(the carried wheels first on PYTHONPATH?)"
        )
    smi = nvidia_smi()
    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        **versions,
        "nvidia_smi": smi,
    }
    try:
        placement = choose(args.device, args.dtype)
    except FastSVDError as exc:
        raise PreflightFailed(str(exc)) from exc
    device = placement.device
    if device.type != "cuda" and args.models == "full":
        raise PreflightFailed(f"the full-size models need a CUDA GPU (nvidia-smi: {smi})")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        major, minor = torch.cuda.get_device_capability(device)
        found |= {
            "gpu": torch.cuda.get_device_name(device),
            "capability": f"{major}.{minor}",
            "free_gib": round(free / 2**30, 1),
            "total_gib": round(total / 2**30, 1),
        }
        if args.models == "full" and free < FULL_SIZE_NEEDS_GIB * 2**30:
            raise PreflightFailed(
                f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f}: the "
                f"full-size run needs about {FULL_SIZE_NEEDS_GIB}"
            )
    found["device"], found["dtype"] = str(device), str(placement.dtype).removeprefix("torch.")
    return found


def stop_on_signals(deadline: float) -> None:
    """SIGTERM and SIGINT, and the budget's end (SIGALRM), raise Stopped; the first one only,
    so that writing out what was measured is not interrupted again."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
            signal.signal(sig, signal.SIG_IGN)
        if signum == signal.SIGALRM:
            raise Stopped("the budget (--budget-s) ran out", 1)
        raise Stopped(signal.Signals(signum).name, 128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, handler)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, deadline - time.monotonic()))


def run_steps(steps: tuple[Any, ...], ctx: Any) -> int:
    """Each step in order, unless the budget left is short of what it needs; returns 1 if one
    failed. Stopped propagates, the step it interrupted recorded."""
    record: Record = ctx.record
    record.plan([s.name for s in steps])
    failed = False
    for i, step in enumerate(steps):
        why = skip_reason(step, steps[i + 1 :], ctx)
        if why:
            record.step(step.name, "skipped", why=why)
            continue
        started = time.perf_counter()
        try:
            step.run(ctx)
        except Stopped as stop:
            record.step(step.name, "interrupted", time.perf_counter() - started, stop.why)
            raise
        except Exception as exc:  # recorded, and the run goes on
            failed = True
            traceback.print_exc()
            message = (str(exc).strip().splitlines() or [""])[0][:300]
            record.step(
                step.name,
                "failed",
                time.perf_counter() - started,
                f"{type(exc).__name__}: {message}",
            )
            free_memory()
        else:
            record.step(step.name, "done", time.perf_counter() - started)
    return 1 if failed else 0


def skip_reason(step: Any, later: tuple[Any, ...], ctx: Any) -> str:
    if step.gpu_only and ctx.device.type != "cuda":
        return "for GPU timings only; no CUDA device here"
    needs = step.needs_s(ctx)
    if not step.main:  # keep what the main steps after it need
        needs += sum(s.needs_s(ctx) for s in later if s.main)
    left = ctx.left_s()
    return f"budget: {left:.0f} s left, needs about {needs:.0f}" if left < needs else ""


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = STARTED + args.budget_s
    out = Path(args.out or os.environ.get("OUT") or "bench-out")
    meta = {
        "call": args.call,
        "models": args.models,
        "size": "{}x{}".format(*args.size),
        "steps": args.steps,
        "repeats": args.repeats,
        "budget_s": args.budget_s,
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
    }
    record = Record(out, meta)
    stop_on_signals(deadline)
    try:
        try:
            found = preflight(args)
        except PreflightFailed as exc:
            line = f"preflight failed: {exc}"
            print(line, flush=True)
            record.data["preflight"] = {"ok": False, "line": line}
            record.save()
            return 3
        line = "preflight ok: " + ", ".join(f"{k} {v}" for k, v in found.items())
        print(line, flush=True)
        record.data["preflight"] = {"ok": True, "line": line, **found}
        meta |= {k: found.get(k) for k in ("device", "dtype", "torch", "gpu")}
        if not found["device"].startswith("cuda"):  # a CPU dry run ends when its steps do,
            signal.setitimer(signal.ITIMER_REAL, 0)  # however loaded the machine
            deadline = float("inf")
        meta["budget_enforced"] = deadline != float("inf")
        record.save()
        return run_call(args, record, deadline)
    except Stopped as stop:
        print(f"stopped: {stop.why}", flush=True)
        record.data["stopped"] = stop.why
        record.save()
        return stop.code
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def run_call(args: argparse.Namespace, record: Record, deadline: float) -> int:
    import gpu_suite
    from fastsvd.pipeline.device import choose
    from fastsvd.runner import params_of
    from fastsvd.schema import FewStepTextToVideoInput, TextToVideoInput

    width, height = args.size
    request = {
        "prompt": "A rocket flying that is about to take off",
        "video_size": {"width": width, "height": height},
    }
    ctx = gpu_suite.Context(
        args=args,
        record=record,
        placement=choose(args.device, args.dtype),
        params=params_of(TextToVideoInput.model_validate({**request, "steps": args.steps}), 42),
        few_params=params_of(FewStepTextToVideoInput.model_validate(request), 42),
        deadline=deadline,
    )
    record.data["meta"]["few_step_steps"] = ctx.few_params.steps
    return run_steps(gpu_suite.CALLS[args.call], ctx)


if __name__ == "__main__":
    sys.exit(main())
