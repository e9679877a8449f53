"""``bench/gpu.py --all``: every GPU figure of docs/performance.md in one run, as JSON + markdown.

One call of at most 10 minutes on one GPU, no network. In order of importance, each step skipped
(and recorded as skipped, its fields left null) once ``--budget-s`` is spent:

1. the decode chunk: the temporal VAE decode of one request's latents with 25, 13, 8, 5 and 1
   frames a call: time, peak memory, deviation from all 25 at once and frame-to-frame flicker;
2. stock diffusers eager, then fastsvd eager, for the default request text to MP4, per stage and
   end to end (median of ``--repeats``), peak memory, U-Net TFLOP/s from counted FLOPs;
   then the few-step family's default request (SDXL-Lightning 4 steps, AnimateLCM 4 steps),
   with the authors' guidance and with none;
3. fastsvd compiled: cold compile (warm-up on an empty inductor cache), then timed; host syncs
   inside the denoising loop counted with ``torch.cuda.set_sync_debug_mode``; dynamo's graph
   count, graph breaks and recompilations across the timed requests;
4. every ``deep_cache`` level, compiled, then the few-step request compiled;
5. a fresh process with the persisted cache: start to ready (build, compile, warm-up);
6. stock diffusers with its U-Nets and decoders compiled as diffusers' docs show;
7. fastsvd compiled with each lossless optimization (channels_last, fuse_qkv), low-memory mode,
   and fp8 (lossy; needs torchao and a GPU of compute capability >= 8.9).

Every configuration's frames are compared with stock eager's: max and mean absolute difference
in levels of 255. On random weights a deviation shows only that an optimization is, or is not,
lossless; its visual cost on real weights is a separate question.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import gpu
from fastsvd.pipeline import compile as compiling
from fastsvd.pipeline import optimize
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.hooks import NO_HOOKS, Hooks, StepEvent
from fastsvd.pipeline.params import GenerationParams
from fastsvd.pipeline.video import decode
from fastsvd.runner import params_of
from fastsvd.schema import FewStepTextToVideoInput, TextToVideoInput

LEVELS = ("none", "minimum", "medium", "high")
CHUNKS = (25, 13, 8, 5, 1)
TIMES = (*gpu.STAGES, "total")
CONFIGS = (
    "stock_eager",
    "fastsvd_eager",
    "fastsvd_compiled",
    "stock_compiled",
    "fastsvd_compiled_channels_last",
    "fastsvd_compiled_fuse_qkv",
    "fastsvd_compiled_low_memory",
    "fastsvd_compiled_fp8",
    # the few-step family (fal-ai/fast-svd-lcm/text-to-video), 4 steps: no stock pipeline runs
    # AnimateLCM, so its deviations are against its own eager run
    "few_step_eager",
    "few_step_eager_no_guidance",
    "few_step_compiled",
)


def empty_config() -> dict[str, Any]:
    """Every field a configuration gets; null until measured."""
    return {
        "status": "skipped",
        "reason": None,
        "times_s": dict.fromkeys(TIMES),
        "runs": [],
        "peak_gib": None,
        "unet_tflops_per_s": None,
        "deviation_from_stock": {"max": None, "mean": None},
        # deep_cache levels with --eager-levels: compiled against the same level run eagerly
        "deviation_from_eager": {"max": None, "mean": None},
    }


def empty_record() -> dict[str, Any]:
    return {
        "meta": {},
        "configs": {name: empty_config() for name in CONFIGS},
        "levels": {level: empty_config() for level in LEVELS},
        "decode_chunks": {
            str(n): {
                "status": "skipped",
                "time_s": None,
                "peak_gib": None,
                "deviation_from_25": {"max": None, "mean": None},
                "flicker": None,
            }
            for n in CHUNKS
        },
        "compile": {
            "cold_warm_up_s": None,
            "cached_warm_up_s": None,
            "start_to_ready_s": None,
            "cached_fxgraph_hits": None,
            "graphs": None,
            "graph_breaks": None,
            "recompiles_after_warm_up": None,
            "stock_compile_s": None,
        },
        "sync": {"host_syncs_in_denoising_loop": None, "mode": None},
        "skipped": [],
    }


def deviation(frames: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    diff = np.abs(frames.astype(np.int16) - reference.astype(np.int16))
    return {"max": int(diff.max()), "mean": round(float(diff.mean()), 4)}


def flicker(frames: np.ndarray) -> float:
    """Mean absolute change from one frame to the next, levels of 255."""
    steps = np.abs(np.diff(frames.astype(np.int16), axis=0))
    return round(float(steps.mean()), 4)


class Budget:
    def __init__(self, seconds: float, record: dict[str, Any]) -> None:
        self.deadline = time.monotonic() + seconds
        self.record = record

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, name: str, needs_s: float = 0.0) -> bool:
        if self.left_s() > needs_s:
            return True
        self.record["skipped"].append(name)
        print(f"skipped {name}: budget spent", flush=True)
        return False


def measure(
    entry: dict[str, Any],
    fn: Callable[[], tuple[np.ndarray, dict[str, float]]],
    repeats: int,
    device: torch.device,
    reference: np.ndarray | None,
    flops: int,
    warm_up: bool = True,
) -> np.ndarray:
    """Fill ``entry`` with the median of ``repeats`` timed runs of ``fn``."""
    if warm_up:
        fn()
    gpu.peak_reset(device)
    runs, frames = [], None
    for _ in range(repeats):
        frames, times = fn()
        runs.append(times)
    assert frames is not None
    entry["status"] = "measured"
    entry["runs"] = runs
    entry["times_s"] = {k: round(statistics.median(r[k] for r in runs), 4) for k in TIMES}
    peak = gpu.peak_gb(device)
    entry["peak_gib"] = None if math.isnan(peak) else round(peak, 3)
    video_s = entry["times_s"]["video"]
    entry["unet_tflops_per_s"] = round(flops / video_s / 1e12, 3) if video_s and flops else None
    if reference is not None:
        entry["deviation_from_stock"] = deviation(frames, reference)
    return frames


def decode_chunks(pipe: VideoPipeline, params: GenerationParams, record: dict[str, Any]) -> None:
    """The decode alone, on the same latents, per chunk size."""
    video = pipe.video
    device, dtype = pipe.placement.device, pipe.placement.dtype
    factor = video.vae_scale_factor
    g = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(
        1, pipe.preset.num_frames, 4, params.height // factor, params.width // factor, generator=g
    ).to(device, dtype)
    reference = None
    for n in CHUNKS:
        entry = record["decode_chunks"][str(n)]
        with torch.inference_mode():
            decode(video, latents, pipe.preset.num_frames, n, NO_HOOKS)  # warm-up
            gpu.peak_reset(device)
            gpu.sync(device)
            started = time.perf_counter()
            pixels = decode(video, latents, pipe.preset.num_frames, n, NO_HOOKS)
            gpu.sync(device)
            entry["time_s"] = round(time.perf_counter() - started, 4)
        peak = gpu.peak_gb(device)
        entry["peak_gib"] = None if math.isnan(peak) else round(peak, 3)
        frames = video.video_processor.postprocess_video(video=pixels, output_type="np")[0]
        frames = (frames * 255).round().clip(0, 255).astype(np.uint8)
        reference = frames if reference is None else reference
        entry["deviation_from_25"] = deviation(frames, reference)
        entry["flicker"] = flicker(frames)
        entry["status"] = "measured"


def count_syncs(pipe: VideoPipeline, params: GenerationParams) -> int | None:
    """Host synchronisations inside steps 2..N of the denoising loop (CUDA only)."""
    if pipe.placement.device.type != "cuda":
        return None

    def on_step(event: StepEvent) -> None:
        if event.stage == "video":
            torch.cuda.set_sync_debug_mode("warn" if event.step < event.total else 0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pipe.generate(params, Hooks(on_step=on_step))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def ready_probe(args: argparse.Namespace) -> None:
    """The child process of step 5: build, compile, warm up; print the times as JSON."""
    started = time.perf_counter()
    placement = gpu.choose(args.device, args.dtype)
    compiling.use_cache_dir(Path(args.cache_dir))
    pipe = gpu.build(args.models, placement)
    options = compiling.CompileOptions(backend=args.compile_backend)
    pipe.compile(options)
    counters.clear()
    warm_up_s = pipe.warm_up(gpu.request_size(args))
    hits = counters["inductor"]["fxgraph_cache_hit"]
    times = {"warm_up_s": warm_up_s, "hits": hits, "in_process_s": time.perf_counter() - started}
    print("READY " + json.dumps(times), flush=True)


def start_to_ready(args: argparse.Namespace, cache_dir: Path, limit_s: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).with_name("gpu.py")), "--ready-probe",
               "--cache-dir", str(cache_dir), "--models", args.models, "--size", args.size,
               "--compile-backend", args.compile_backend]  # fmt: skip
    for flag, value in (("--device", args.device), ("--dtype", args.dtype)):
        if value:
            command += [flag, value]
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=limit_s)
    total = time.perf_counter() - started
    line = next(x for x in out.stdout.splitlines() if x.startswith("READY "))
    return {"start_to_ready_s": total, **json.loads(line.removeprefix("READY "))}


def run_all(args: argparse.Namespace) -> None:
    record = empty_record()
    budget = Budget(args.budget_s, record)
    out = Path(args.out or os.environ.get("OUT") or "bench-out")
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="fastsvd-compile-"))
    compiling.use_cache_dir(cache_dir)  # empty: the first compile is cold
    placement = gpu.choose(args.device, args.dtype)
    device = placement.device
    built = time.perf_counter()
    pipe = gpu.build(args.models, placement)
    build_s = time.perf_counter() - built
    if args.first_frame_steps:
        pipe.preset = dataclasses.replace(pipe.preset, first_frame_steps=args.first_frame_steps)
    size = gpu.request_size(args)
    base = {"prompt": "A rocket flying that is about to take off", "steps": args.steps,
            "video_size": {"width": size[0], "height": size[1]}}  # fmt: skip
    params = params_of(TextToVideoInput.model_validate({**base, "deep_cache": "none"}), seed=42)
    flops = gpu.unet_flops(pipe, params) * args.steps
    record["meta"] = {
        "models": args.models, "size": f"{size[0]}x{size[1]}", "steps": args.steps,
        "frames": pipe.preset.num_frames, "first_frame_steps": pipe.preset.first_frame_steps,
        "device": str(device), "dtype": str(placement.dtype), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "repeats": args.repeats, "compile_backend": args.compile_backend,
        "build_s": round(build_s, 2), "unet_tflop_per_request": round(flops / 1e12, 3),
        "decode_chunk_size": pipe.preset.decode_chunk_size,
    }  # fmt: skip
    configs = record["configs"]

    def fast() -> tuple[np.ndarray, dict[str, float]]:
        return gpu.run_fastsvd(pipe, params)

    try:
        # 1. decode chunks, eager (each chunk size would be a graph of its own)
        if budget.allows("decode_chunks"):
            decode_chunks(pipe, params, record)
        # 2. eager, both sides
        reference = measure(
            configs["stock_eager"], lambda: gpu.run_stock(pipe, params),
            args.repeats, device, None, flops,
        )  # fmt: skip
        configs["stock_eager"]["deviation_from_stock"] = deviation(reference, reference)
        if budget.allows("fastsvd_eager"):
            measure(configs["fastsvd_eager"], fast, args.repeats, device, reference, flops)
        few_params = dataclasses.replace(
            params_of(FewStepTextToVideoInput.model_validate({**base, "steps": 4}), seed=42)
        )
        few_flops = flops // args.steps * few_params.steps  # the same U-Net architecture
        few_frames = None

        def few() -> tuple[np.ndarray, dict[str, float]]:
            return gpu.run_fastsvd(pipe, few_params)

        if pipe.few_step_video is not None and budget.allows("few_step_eager"):
            few_frames = measure(configs["few_step_eager"], few, args.repeats, device, None,
                                 few_flops)  # fmt: skip
            saved, pipe.few_step_guidance = pipe.few_step_guidance, 1.0
            try:  # FASTSVD_FEW_STEP_GUIDANCE=1.0: one U-Net batch a step
                measure(configs["few_step_eager_no_guidance"], few, args.repeats, device, None,
                        few_flops // 2)  # fmt: skip
            finally:
                pipe.few_step_guidance = saved
        eager_levels = {  # what each level gives uncompiled, for compiled-against-eager
            level: gpu.run_fastsvd(pipe, dataclasses.replace(params, deep_cache=level))[0]
            for level in (LEVELS if args.eager_levels else ())
        }
        # 3. compiled, cold
        counter = CompileCounterWithBackend(args.compile_backend)
        if budget.allows("fastsvd_compiled", 60):
            pipe.compile(compiling.CompileOptions(backend=counter))
            counters.clear()
            record["compile"]["cold_warm_up_s"] = round(pipe.warm_up(size), 2)
            graphs = counter.frame_count
            measure(configs["fastsvd_compiled"], fast, args.repeats, device, reference, flops,
                    warm_up=False)  # fmt: skip
            record["sync"]["mode"] = "torch.cuda.set_sync_debug_mode('warn'), steps 2..N"
            record["sync"]["host_syncs_in_denoising_loop"] = count_syncs(pipe, params)
            record["compile"]["graphs"] = graphs
            record["compile"]["graph_breaks"] = sum(counters["graph_break"].values())
            record["compile"]["recompiles_after_warm_up"] = counter.frame_count - graphs
        # 4. deep_cache levels, compiled when step 3 ran
        for level in LEVELS:
            if not budget.allows(f"level {level}", 10):
                continue
            level_params = dataclasses.replace(params, deep_cache=level)
            frames = measure(
                record["levels"][level], lambda p=level_params: gpu.run_fastsvd(pipe, p),
                args.repeats, device, reference, flops if level == "none" else 0,
            )  # fmt: skip
            if level in eager_levels:
                record["levels"][level]["deviation_from_eager"] = deviation(
                    frames, eager_levels[level]
                )
        compiled = record["compile"]["graphs"] is not None
        if compiled and few_frames is not None and budget.allows("few_step_compiled", 10):
            frames = measure(configs["few_step_compiled"], few, args.repeats, device, None,
                             few_flops)  # fmt: skip
            configs["few_step_compiled"]["deviation_from_eager"] = deviation(frames, few_frames)
        if compiled:  # every level's and the few-step requests, one size: no new graph
            record["compile"]["graph_breaks"] = sum(counters["graph_break"].values())
            record["compile"]["recompiles_after_warm_up"] = counter.frame_count - graphs
        # 5. a restart with the persisted cache
        if "start_to_ready" in args.skip.split(","):
            record["skipped"].append("start_to_ready (--skip)")
        elif budget.allows("start_to_ready", 120):
            try:
                probe = start_to_ready(args, cache_dir, budget.left_s())
                record["compile"]["start_to_ready_s"] = round(probe["start_to_ready_s"], 2)
                record["compile"]["cached_warm_up_s"] = round(probe["warm_up_s"], 2)
                record["compile"]["cached_fxgraph_hits"] = probe["hits"]
            except (subprocess.SubprocessError, StopIteration) as exc:
                record["skipped"].append(f"start_to_ready ({type(exc).__name__})")
        # 6. stock, compiled the diffusers way (in place: the modules are shared, so last but one)
        if budget.allows("stock_compiled", 90):
            started = time.perf_counter()
            options = compiling.CompileOptions(backend=args.compile_backend)
            options.module(pipe.video.unet)
            if pipe.first_frame is not None:
                options.module(pipe.first_frame.unet)  # already, for fastsvd: same modules
            gpu.run_stock(pipe, params)
            record["compile"]["stock_compile_s"] = round(time.perf_counter() - started, 2)
            measure(configs["stock_compiled"], lambda: gpu.run_stock(pipe, params),
                    args.repeats, device, reference, flops, warm_up=False)  # fmt: skip
        # 7. optimizations on the compiled fastsvd pipeline (each changes the models in place)
        wanted = set(args.optimizations.split(","))
        for name in ("channels_last", "fuse_qkv", "low_memory", "fp8"):
            key = f"fastsvd_compiled_{name}"
            if name not in wanted:
                configs[key]["status"] = "not_requested"
                configs[key]["reason"] = "left out by --optimizations"
                continue
            if not budget.allows(key, 60):
                continue
            try:
                if name == "low_memory":
                    pipe.low_memory = True
                else:
                    optimize.apply((pipe.video, pipe.first_frame), (name,))
                if name == "fp8":  # the quantized U-Net needs graphs of its own
                    pipe.graphs.compile(compiling.CompileOptions(backend=args.compile_backend).wrap)
                measure(configs[key], fast, args.repeats, device, reference, flops)
            except Exception as exc:  # recorded, not fatal: the rest of the run still counts
                configs[key]["status"] = "failed"
                configs[key]["reason"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            finally:
                pipe.low_memory = False
    finally:
        (out / "gpu.json").write_text(json.dumps(record, indent=1))
        (out / "gpu.md").write_text(markdown(record))
        print(markdown(record), flush=True)


def _f(value: Any, digits: int = 3) -> str:
    return (
        "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    )


def markdown(record: dict[str, Any]) -> str:
    meta = record["meta"]
    lines = [
        f"# bench/gpu.py --all: {meta.get('models')} models, {meta.get('size')}, "
        f"{meta.get('frames')} frames, {meta.get('steps')} steps",
        "",
        f"{meta.get('gpu') or meta.get('device')}, {meta.get('dtype')}, torch {meta.get('torch')}, "
        f"median of {meta.get('repeats')}; video U-Net {meta.get('unet_tflop_per_request')} TFLOP "
        "per request (counted)",
        "",
        "| configuration | first frame s | video s | decode s | export s | total s | peak GiB "
        "| U-Net TFLOP/s | max dev | mean dev |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [
        *record["configs"].items(),
        *((f"deep_cache {k}", v) for k, v in record["levels"].items()),
    ]
    for name, entry in rows:
        t, dev = entry["times_s"], entry["deviation_from_stock"]
        if dev["max"] is None:  # compiled against eager (few-step, --eager-levels)
            dev = entry["deviation_from_eager"]
        status = "" if entry["status"] == "measured" else f" ({entry['status']})"
        lines.append(
            f"| {name}{status} | {_f(t['first_frame'])} | {_f(t['video'])} | {_f(t['decode'])} "
            f"| {_f(t['export'])} | {_f(t['total'])} | {_f(entry['peak_gib'], 2)} "
            f"| {_f(entry['unet_tflops_per_s'], 1)} | {_f(dev['max'])} | {_f(dev['mean'])} |"
        )
    lines += ["", "| decode chunk | time s | peak GiB | max dev vs 25 | mean dev | flicker |",
              "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for n, e in record["decode_chunks"].items():
        d = e["deviation_from_25"]
        lines.append(f"| {n} | {_f(e['time_s'])} | {_f(e['peak_gib'], 2)} | {_f(d['max'])} "
                     f"| {_f(d['mean'])} | {_f(e['flicker'])} |")  # fmt: skip
    lines += ["", "| compile | value |", "| --- | --- |"]
    lines += [f"| {k} | {_f(v, 2)} |" for k, v in {**record["compile"], **record["sync"]}.items()]
    if record["skipped"]:
        lines += ["", f"skipped (budget): {', '.join(record['skipped'])}"]
    return "\n".join(lines) + "\n"
