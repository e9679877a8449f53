"""The steps of the device run's two calls, in order of value (docs/performance.md, "GPU").

Call 1, eager, enough on its own if only one call fits:
  ``build`` (both families, in bf16 on the GPU), ``flops`` (the video U-Net's, counted),
  ``warm_up``, ``default_eager`` (fal's default text-to-MP4 request, stock diffusers and fastsvd
  alternating, per stage), ``few_step_eager`` (the few-step text-to-video request); then, with
  budget left, ``few_step_eager_no_guidance`` and ``levels_eager``.
Call 2, compiled:
  ``build``, ``compiled`` (the 20-step request; its first run is the cold compile, at the
  default size only), ``levels_compiled`` (every ``deep_cache`` level), ``decode_chunks``; then,
  with budget left after keeping what ``memory_24gb`` needs, ``few_step_compiled``,
  ``compiled_vs_eager``, ``sync_count``, ``stock_compiled`` and the optimizations; then
  ``memory_24gb`` (the 24 GB plan in a process held to 24 GiB); then ``start_to_ready``.

Steps that are there for GPU timings only (what they run is checked by the CPU tests, or by the
other steps here) are recorded as skipped on a CPU. Budget estimates come from what the same
call measured before.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from fastsvd.endpoints import ENDPOINTS
from fastsvd.hooks import NO_HOOKS, Hooks, StepEvent
from fastsvd.pipeline import compile as compiling
from fastsvd.pipeline import memory, optimize
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.device import Placement, choose
from fastsvd.pipeline.memory import Plan
from fastsvd.pipeline.params import GenerationParams
from fastsvd.pipeline.presets import FEW_STEP, models_of
from fastsvd.pipeline.video import decode
from fastsvd.schema import DeepCache
from gpu_models import (
    Frames,
    Stock,
    Times,
    build,
    deviation,
    peak,
    reset_peak,
    run_fastsvd,
    sync,
    unet_flops_per_step,
)
from gpu_record import Record, gib

CHUNKS = (25, 13, 8, 5, 1)
LEVELS = (DeepCache.minimum, DeepCache.medium, DeepCache.high)  # "none" is the plain request
PLAN_GB = 24  # the memory plan emulated in call 2: a 24 GB card (RTX 4090, L4, A10)


@dataclass
class Context:
    """What the steps of one call share: the requests, the models, what was measured so far."""

    args: argparse.Namespace
    record: Record
    placement: Placement
    params: GenerationParams  # fal's default text-to-video request (or the tiny one)
    few_params: GenerationParams  # the few-step text-to-video request
    pipe: VideoPipeline | None = None
    stock: Stock | None = None
    build_s: float = 0.0
    request_s: float = 0.0  # the latest median of a default request in this call
    compile_s: float = 0.0  # this call's cold compile
    flops: dict[str, int] = field(default_factory=dict)
    counter: CompileCounterWithBackend | None = None
    compiled: dict[str, tuple[GenerationParams, Frames]] = field(default_factory=dict)
    cache_dir: Path | None = None
    deadline: float = float("inf")  # time.monotonic() at which the call's budget is spent

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def model(self) -> VideoPipeline:
        if self.pipe is None:
            raise RuntimeError("no pipeline: the build step did not finish")
        return self.pipe

    @property
    def backend(self) -> str:
        # on a CPU dynamo's eager backend: the graphs are traced as on the GPU, in seconds
        return "inductor" if self.device.type == "cuda" else "eager"


@dataclass(frozen=True)
class Step:
    """One step of a call: what it runs and the seconds it is estimated to need."""

    name: str
    run: Callable[[Context], None]
    needs_s: Callable[[Context], float] = lambda _ctx: 0.0
    main: bool = True  # False: only in budget left over once the later main steps are kept
    gpu_only: bool = False  # for GPU timings only (the CPU tests check what it runs): skipped


def timed(
    ctx: Context,
    config: str,
    run: Callable[[], tuple[Frames, Times]],
    flops: int | None = None,
    repeats: int | None = None,
) -> Frames:
    """``repeats`` (default ``--repeats``) timed runs of ``config``, each a row; returns the
    last run's frames."""
    if flops:
        ctx.record.config(config)["unet_tflop"] = round(flops / 1e12, 6)
    frames = None
    for _ in range(ctx.args.repeats if repeats is None else repeats):
        resident = reset_peak(ctx.device)
        frames, times = run()
        ctx.record.row(config, times, peak(ctx.device), resident_gib=gib(resident))
    assert frames is not None
    return frames


def median_total(ctx: Context, config: str) -> float:
    return float(ctx.record.config(config)["times_s"]["total"])


def note_deviation(
    ctx: Context, config: str, frames: Frames, reference: Frames, against: str
) -> None:
    """How far ``config``'s frames are from ``reference`` (``against`` names it)."""
    dev = deviation(frames, reference)
    ctx.record.config(config).setdefault("deviations", {})[against] = dev
    ctx.record.fact("deviation", f"{config} against {against}", **dev)


# -- both calls ------------------------------------------------------------------------------


def build_step(ctx: Context) -> None:
    started = time.perf_counter()
    ctx.pipe = build(ctx.args.models, ctx.placement)
    sync(ctx.device)
    ctx.build_s = time.perf_counter() - started
    resident = torch.cuda.memory_allocated(ctx.device) if ctx.device.type == "cuda" else None
    ctx.record.fact(
        "build",
        "all four endpoints' models",
        seconds=round(ctx.build_s, 2),
        resident_gib=None if resident is None else gib(resident),
    )


# -- call 1: eager ---------------------------------------------------------------------------


def flops_step(ctx: Context) -> None:
    pipe = ctx.model
    per_step = unet_flops_per_step(pipe.video.unet, pipe, ctx.params, batch=2)  # guided
    ctx.flops = {
        "default": per_step * ctx.params.steps,
        # the few-step U-Net has SVD-XT's architecture; without guidance, one batch a step
        "few_step": per_step * ctx.few_params.steps,
        "few_step_no_guidance": per_step // 2 * ctx.few_params.steps,
    }
    tflop = {f"{name}_request_tflop": round(n / 1e12, 3) for name, n in ctx.flops.items()}
    ctx.record.fact("flops", "video U-Net", step_tflop=round(per_step / 1e12, 3), **tflop)


def warm_up_step(ctx: Context) -> None:
    """A two-step request on each side, and a few-step one: kernels chosen, caches filled."""
    short = dataclasses.replace(ctx.params, steps=2)
    ctx.stock = Stock(ctx.model)
    ctx.stock.run(short)
    run_fastsvd(ctx.model, short)
    run_fastsvd(ctx.model, ctx.few_params)


def default_eager(ctx: Context) -> None:
    """Stock and fastsvd alternating, one request each per round."""
    pipe, stock = ctx.model, ctx.stock or Stock(ctx.model)
    flops = ctx.flops.get("default")
    for _ in range(ctx.args.repeats):
        reference = timed(ctx, "stock_eager", lambda: stock.run(ctx.params), flops, 1)
        frames = timed(ctx, "fastsvd_eager", lambda: run_fastsvd(pipe, ctx.params), flops, 1)
    note_deviation(ctx, "fastsvd_eager", frames, reference, "stock_eager")
    ctx.request_s = median_total(ctx, "fastsvd_eager")


def few_step_eager(ctx: Context) -> None:
    timed(
        ctx,
        "few_step_eager",
        lambda: run_fastsvd(ctx.model, ctx.few_params),
        ctx.flops.get("few_step"),
    )


def few_step_eager_no_guidance(ctx: Context) -> None:
    """FASTSVD_FEW_STEP_GUIDANCE=1.0: one U-Net batch a step instead of two."""
    pipe = ctx.model
    saved = pipe.families[FEW_STEP]
    pipe.families[FEW_STEP] = dataclasses.replace(saved, max_guidance_scale=1.0)
    try:
        timed(
            ctx,
            "few_step_eager_no_guidance",
            lambda: run_fastsvd(pipe, ctx.few_params),
            ctx.flops.get("few_step_no_guidance"),
        )
    finally:
        pipe.families[FEW_STEP] = saved


def levels_eager(ctx: Context) -> None:
    for level in LEVELS:
        params = dataclasses.replace(ctx.params, deep_cache=level)
        timed(ctx, f"deep_cache_{level}_eager", lambda p=params: run_fastsvd(ctx.model, p))


def chained_few_step(ctx: Context) -> None:
    """One chained request, 49 frames (two segments) of the few-step family, streamed into its
    MP4 as a worker runs it; beside the 25-frame few-step request's seconds."""
    params = dataclasses.replace(ctx.few_params, num_frames=49)
    sync(ctx.device)
    started = time.perf_counter()
    ctx.model.to_mp4(ctx.model.stream(params))
    sync(ctx.device)
    ctx.record.fact(
        "chained",
        "few_step 49 frames",
        seconds=round(time.perf_counter() - started, 3),
        segments=2,
    )


CALL_1 = (
    Step("build", build_step),
    Step("flops", flops_step),
    Step("warm_up", warm_up_step, gpu_only=True),
    Step("default_eager", default_eager),
    Step("few_step_eager", few_step_eager),
    Step(
        "few_step_eager_no_guidance",
        few_step_eager_no_guidance,
        lambda ctx: ctx.args.repeats * ctx.request_s * 0.3,
        main=False,
        gpu_only=True,
    ),
    Step(
        "levels_eager",
        levels_eager,
        lambda ctx: len(LEVELS) * ctx.args.repeats * ctx.request_s,
        main=False,
        gpu_only=True,
    ),
    # two few-step segments: about half of a 20-step request
    Step(
        "chained_few_step",
        chained_few_step,
        lambda ctx: ctx.request_s * 0.6,
        main=False,
        gpu_only=True,
    ),
)


# -- call 2: compiled ------------------------------------------------------------------------


def compiled_config(
    ctx: Context, config: str, params: GenerationParams, flops: int | None
) -> float:
    """A compiled request: its first run (compiling what it needs) as a fact, then timed;
    returns the compile time (the first run's time over the timed runs' median)."""
    assert ctx.counter is not None
    graphs = ctx.counter.frame_count

    def on_stage(stage: str, seconds: float) -> None:  # a long compile shows where it is
        ctx.record.fact("compile", f"{config} first request", **{f"{stage}_s": round(seconds, 2)})

    first_s = run_fastsvd(ctx.model, params, on_stage)[1]["total"]
    compiled = ctx.counter.frame_count
    frames = timed(ctx, config, lambda: run_fastsvd(ctx.model, params), flops)
    ctx.compiled[config] = (params, frames)
    compile_s = first_s - median_total(ctx, config)
    ctx.record.fact(
        "compile",
        config,
        first_request_s=round(first_s, 2),
        compile_s=round(compile_s, 2),
        new_graphs=compiled - graphs,
        new_graphs_in_timed_runs=ctx.counter.frame_count - compiled,
        graph_breaks=sum(counters["graph_break"].values()),
    )
    return compile_s


def compiled(ctx: Context) -> None:
    """The 20-step request compiled (FASTSVD_COMPILE=1), cold: an empty inductor cache."""
    ctx.cache_dir = compiling.use_cache_dir(Path(tempfile.mkdtemp(prefix="fastsvd-compile-")))
    ctx.counter = CompileCounterWithBackend(ctx.backend)
    ctx.model.compile(compiling.CompileOptions(backend=ctx.counter))
    ctx.model.compile_on_first_use()  # the first request compiles, as `fastsvd generate` does
    counters.clear()
    ctx.compile_s = compiled_config(ctx, "fastsvd_compiled", ctx.params, ctx.flops.get("default"))
    ctx.request_s = median_total(ctx, "fastsvd_compiled")


def levels_compiled(ctx: Context) -> None:
    none = ctx.compiled["fastsvd_compiled"][1]
    for level in LEVELS:
        config = f"deep_cache_{level}_compiled"
        compiled_config(ctx, config, dataclasses.replace(ctx.params, deep_cache=level), None)
        note_deviation(ctx, config, ctx.compiled[config][1], none, "deep_cache none")


def decode_chunks(ctx: Context) -> None:
    """The temporal VAE decode alone, eager, of the same latents at each chunk size."""
    pipe, params = ctx.model, ctx.params
    video, frames_n = pipe.video, pipe.preset.num_frames
    factor = video.vae_scale_factor
    generator = torch.Generator("cpu").manual_seed(0)
    # [1, F, 4, h, w]
    latents = torch.randn(
        1, frames_n, 4, params.height // factor, params.width // factor, generator=generator
    ).to(ctx.device, ctx.placement.dtype)
    reference = None
    for n in CHUNKS:
        with torch.inference_mode(), torch.compiler.set_stance("force_eager"):
            decode(video, latents, frames_n, n, NO_HOOKS)  # warm-up: this shape's kernels
            resident = reset_peak(ctx.device)
            sync(ctx.device)
            started = time.perf_counter()
            pixels = decode(video, latents, frames_n, n, NO_HOOKS)
            sync(ctx.device)
            seconds = time.perf_counter() - started
        most = peak(ctx.device)
        frames = video.video_processor.postprocess_video(video=pixels, output_type="np")[0]
        frames = (frames * 255).round().clip(0, 255).astype(np.uint8)
        reference = frames if reference is None else reference
        dev = deviation(frames, reference)  # against 25 frames a call
        ctx.record.fact(
            "decode_chunks",
            f"{n} frames a call",
            seconds=round(seconds, 4),
            peak_gib=gib(most),
            above_resident_gib=gib(most - resident),
            max_dev=dev["max"],
            mean_dev=dev["mean"],
            # mean absolute change from one frame to the next, levels of 255
            flicker=round(float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean()), 4),
        )


def few_step_compiled(ctx: Context) -> None:
    compiled_config(ctx, "few_step_compiled", ctx.few_params, ctx.flops.get("few_step"))


def compiled_vs_eager(ctx: Context) -> None:
    """Each compiled request's frames against the same request run eagerly, same models."""
    for config, (params, frames) in ctx.compiled.items():
        with torch.compiler.set_stance("force_eager"):
            eager, _times = run_fastsvd(ctx.model, params)
        note_deviation(ctx, config, frames, eager, "eager")


def sync_count(ctx: Context) -> None:
    """Host synchronisations inside steps 2..N of the compiled denoising loop."""

    def on_step(event: StepEvent) -> None:
        if event.stage == "video":
            torch.cuda.set_sync_debug_mode("warn" if event.step < event.total else 0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ctx.model.generate(ctx.params, Hooks(on_step=on_step))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    ctx.record.fact("compile", "host syncs in the denoising loop", steps_2_to_n=syncs)


def stock_compiled(ctx: Context) -> None:
    """Stock diffusers with its video U-Net compiled in place as diffusers' docs show (the
    first-frame U-Net and the decoders are the ones fastsvd compiled: the same modules)."""
    stock = ctx.stock or Stock(ctx.model)
    compiling.CompileOptions(backend=ctx.backend).module(stock.video.unet)
    started = time.perf_counter()
    stock.run(ctx.params)
    first_s = time.perf_counter() - started
    frames = timed(ctx, "stock_compiled", lambda: stock.run(ctx.params), ctx.flops.get("default"))
    note_deviation(
        ctx, "stock_compiled", frames, ctx.compiled["fastsvd_compiled"][1], "fastsvd_compiled"
    )
    ctx.record.fact("compile", "stock_compiled", first_request_s=round(first_s, 2))


def optimization(name: str) -> Callable[[Context], None]:
    """The compiled pipeline with ``name`` added to those applied before (they accumulate)."""

    def run(ctx: Context) -> None:
        pipe = ctx.model
        optimize.apply((pipe.video, pipe.first_frame), (name,))
        if name == "fp8":  # the quantized U-Net needs graphs of its own
            options = compiling.CompileOptions(backend=ctx.backend)
            pipe.graphs.compile(options.wrap)
            compiling.set_state(options.guards, compiling.GraphState.warming)
        compiled_config(ctx, f"fastsvd_compiled+{name}", ctx.params, ctx.flops.get("default"))
        note_deviation(
            ctx,
            f"fastsvd_compiled+{name}",
            ctx.compiled[f"fastsvd_compiled+{name}"][1],
            ctx.compiled["fastsvd_compiled"][1],
            "fastsvd_compiled",
        )

    return run


def memory_24gb(ctx: Context) -> None:
    """The 24 GB plan, all four endpoints' models, in a process held to 24 GiB of the GPU
    (``torch.cuda.set_per_process_memory_fraction``); on a CPU, run without a limit."""
    ctx.pipe = ctx.stock = ctx.counter = None  # this call's models and graphs go first
    ctx.compiled.clear()
    torch._dynamo.reset()
    gc.collect()
    cuda = ctx.device.type == "cuda"
    total = torch.cuda.get_device_properties(ctx.device).total_memory if cuda else None
    fraction = PLAN_GB * 2**30 / total if total else None
    if fraction is not None:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(fraction, ctx.device)
    os.environ["FASTSVD_GPU_MEMORY_GB"] = str(PLAN_GB)  # for a pipeline that plans from it
    try:
        before = reset_peak(ctx.device)
        ctx.pipe = build(ctx.args.models, ctx.placement)
        plan = plan_24gb(ctx.pipe, ctx.args.models)
        now = torch.cuda.memory_allocated(ctx.device) if cuda else float("nan")
        ctx.record.fact(
            "memory_24gb",
            "plan",
            device=ctx.device.type,
            memory_plan=plan.describe(),
            fraction=None if fraction is None else round(fraction, 4),
            total_gib=None if total is None else gib(total),
            build_peak_gib=gib(peak(ctx.device) - before),
            resident_gib=gib(now - before),
        )
        timed(ctx, "plan_24gb_default", lambda: run_fastsvd(ctx.model, ctx.params))
        timed(ctx, "plan_24gb_few_step", lambda: run_fastsvd(ctx.model, ctx.few_params))
    finally:
        ctx.pipe = None
        os.environ.pop("FASTSVD_GPU_MEMORY_GB", None)
        gc.collect()
        if fraction is not None:
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(1.0, ctx.device)


def plan_24gb(pipe: VideoPipeline, models: str) -> Plan:
    """The memory plan fastsvd chooses for a 24 GB card serving all four endpoints
    (``pipeline/memory.py``), applied to ``pipe``; the tiny models' weights count as nothing,
    as a worker counts them."""
    endpoints = {e.id: models_of([e.capability]) for e in ENDPOINTS}
    plan = memory.choose(
        int(PLAN_GB * memory.GiB),
        endpoints,
        dtype_bytes=pipe.placement.dtype.itemsize,
        preset_chunk=pipe.preset.decode_chunk_size,
        weights=None if models == "full" else dict.fromkeys(memory.PARTS, 0),
        fp16=pipe.placement.dtype == torch.float16,
    )
    pipe.use_plan(plan)
    if pipe.placement.device.type == "cuda":
        torch.cuda.empty_cache()
    return plan


def start_to_ready(ctx: Context) -> None:
    """A new process on this call's compile cache: start, build, compile, warm up."""
    assert ctx.cache_dir is not None
    command = [
        sys.executable,
        __file__,  # this module's ``ready_probe`` (gpu.py imports this one: not back)
        "--models",
        ctx.args.models,
        "--size",
        f"{ctx.params.width}x{ctx.params.height}",
        "--cache-dir",
        str(ctx.cache_dir),
    ]
    started = time.perf_counter()
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=max(1.0, ctx.left_s())
    )
    total = time.perf_counter() - started
    line = next(x for x in out.stdout.splitlines() if x.startswith("READY "))
    ctx.record.fact(
        "compile",
        "start_to_ready",
        start_to_ready_s=round(total, 2),
        **json.loads(line.removeprefix("READY ")),
    )


def ready_probe(argv: list[str] | None = None) -> None:
    """The child process of ``start_to_ready``: build, compile, warm up; print the times."""
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=ready_probe.__doc__)
    parser.add_argument("--models", required=True)
    parser.add_argument("--size", required=True, help="WIDTHxHEIGHT")
    parser.add_argument("--cache-dir", required=True)
    args = parser.parse_args(argv)
    compiling.use_cache_dir(Path(args.cache_dir))
    placement = choose(None, None)  # as gpu.py chooses by default
    pipe = build(args.models, placement)
    backend = "inductor" if placement.device.type == "cuda" else "eager"
    pipe.compile(compiling.CompileOptions(backend=backend))
    counters.clear()
    width, height = (int(v) for v in args.size.split("x"))
    warm_up_s = pipe.warm_up((width, height))
    times = {
        "warm_up_s": round(warm_up_s, 2),
        "cache_hits": counters["inductor"]["fxgraph_cache_hit"],
        "in_process_s": round(time.perf_counter() - started, 2),
    }
    print("READY " + json.dumps(times), flush=True)


def _keep_for_plan(ctx: Context) -> float:
    """What ``memory_24gb`` is estimated to need: a build and two eager requests, with room."""
    return 1.5 * ctx.build_s + 6 * ctx.request_s


CALL_2 = (
    Step("build", build_step),
    Step("flops", flops_step),
    Step("compiled", compiled),
    Step("levels_compiled", levels_compiled),
    Step("decode_chunks", decode_chunks),
    Step(
        "few_step_compiled",
        few_step_compiled,
        lambda ctx: ctx.compile_s + 3 * ctx.request_s,
        main=False,
    ),
    Step(
        "compiled_vs_eager",
        compiled_vs_eager,
        lambda ctx: len(ctx.compiled) * 3 * ctx.request_s,
        main=False,
    ),
    Step("sync_count", sync_count, lambda ctx: 2 * ctx.request_s, main=False, gpu_only=True),
    Step(
        "stock_compiled",
        stock_compiled,
        lambda ctx: ctx.compile_s + 6 * ctx.request_s,
        main=False,
        gpu_only=True,
    ),
    *(
        Step(
            f"optimization_{name}",
            optimization(name),
            lambda ctx: ctx.compile_s + 3 * ctx.request_s,
            main=False,
            gpu_only=True,
        )
        for name in ("channels_last", "fuse_qkv", "fp8")
    ),
    Step("memory_24gb", memory_24gb, _keep_for_plan),
    Step(
        "start_to_ready",
        start_to_ready,
        lambda ctx: 30 + ctx.build_s + ctx.compile_s,
        main=False,
        gpu_only=True,
    ),
)
CALLS = {1: CALL_1, 2: CALL_2}


if __name__ == "__main__":
    ready_probe()
