"""Text to MP4 at full size: fastsvd against the stock diffusers pipelines, in one run.

    .venv/bin/python bench/gpu.py                      # on a GPU: the default request
    .venv/bin/python bench/gpu.py --models tiny        # anywhere: the same code, tiny models
    .venv/bin/python bench/gpu.py --all --out DIR      # every figure, JSON + markdown (gpu_suite)

The models are built from their real configs with random weights (``pipeline/full_size.py``):
the SDXL base first-frame model and SVD-XT (U-Net, temporal VAE, CLIP image encoder), at the
released sizes, so the work is the real work; nothing is downloaded. The request is fal's
default (1024x576, 25 frames, 20 steps) unless overridden.

Both sides run in the same process on the same models: the stock ``StableDiffusionXLPipeline``
and ``StableVideoDiffusionPipeline.__call__`` (in the placement's dtype, default attention, no
compile), then fastsvd's ``VideoPipeline``, alternating for ``--repeats`` rounds after a warm-up
of each. Reported per side: the stages (first frame, video denoising, VAE decode, MP4 encode),
end to end, peak GPU memory, and the video U-Net's achieved TFLOP/s from FLOPs counted with
``torch.utils.flop_counter`` on the exact shapes (not assumed); then each ``deep_cache`` level
with its time and its frames' deviation from ``none`` (on random weights the deviation shows
the mechanism works; the quality cost on real weights is measured separately).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # no install needed

from fastsvd.pipeline.quiet import quiet_libraries

quiet_libraries()

from fastsvd.pipeline import full_size, optimize, stock  # noqa: E402
from fastsvd.pipeline.core import Models, VideoPipeline, load_pipeline  # noqa: E402
from fastsvd.pipeline.device import Placement, choose  # noqa: E402
from fastsvd.pipeline.encode import encode_mp4  # noqa: E402
from fastsvd.pipeline.hooks import Hooks, Stage, StepEvent  # noqa: E402
from fastsvd.pipeline.params import GenerationParams  # noqa: E402
from fastsvd.pipeline.presets import SVD_XT_1_1, TINY  # noqa: E402
from fastsvd.runner import params_of  # noqa: E402
from fastsvd.schema import TextToVideoInput  # noqa: E402

STAGES = ("first_frame", "video", "decode", "export")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float:
    return (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    )


def build(models: str, placement: Placement, few_step: bool = True) -> VideoPipeline:
    """Both families' models (or the 20-step one alone), tiny or full size."""
    if models == "tiny":
        parts = Models(few_step_video=few_step, few_step_first_frame=few_step)
        return load_pipeline(TINY, placement, models=parts)
    video = full_size.build_video(placement.device, placement.dtype)
    first_frame = full_size.build_first_frame(placement.device, placement.dtype)
    few_step_video, few_step_first_frame = (
        full_size.build_few_step(video, first_frame) if few_step else (None, None)
    )
    return VideoPipeline(
        SVD_XT_1_1,
        placement,
        video,
        first_frame,
        few_step_video=few_step_video,
        few_step_first_frame=few_step_first_frame,
    )


def run_stock(pipe: VideoPipeline, params: GenerationParams) -> tuple[np.ndarray, dict[str, float]]:
    """The stock pipelines, as a diffusers user would call them; stages timed at their ends."""
    device = pipe.placement.device
    times: dict[str, float] = {}
    sync(device)
    start = time.perf_counter()
    image = stock.first_frame(pipe, params)
    times["first_frame"] = time.perf_counter() - start
    marks: dict[str, float] = {}

    def on_step_end(_p: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if i == params.steps - 1:
            sync(device)
            marks["denoised"] = time.perf_counter()
        return kwargs

    video_start = time.perf_counter()
    frames = pipe.video(
        image, **stock.video_arguments(pipe, params), callback_on_step_end=on_step_end
    ).frames[0]
    done = time.perf_counter()
    times["video"] = marks["denoised"] - video_start
    times["decode"] = done - marks["denoised"]
    pixels = stock.to_pixels(frames)
    start = time.perf_counter()
    encode_mp4(pixels, params.fps)
    times["export"] = time.perf_counter() - start
    times["total"] = time.perf_counter() - (video_start - times["first_frame"])
    return pixels, times


def run_fastsvd(
    pipe: VideoPipeline, params: GenerationParams
) -> tuple[np.ndarray, dict[str, float]]:
    """fastsvd's pipeline; a device sync closes each stage so its timing is whole."""
    device = pipe.placement.device

    def on_step(event: StepEvent) -> None:
        if event.step == event.total:
            sync(device)

    sync(device)
    start = time.perf_counter()
    video = pipe.generate(params, Hooks(on_step=on_step))
    pipe.to_mp4(video)
    total = time.perf_counter() - start
    times = {stage: video.timings_s.get(Stage(stage), 0.0) for stage in STAGES}
    times["total"] = total
    return video.frames, times


def unet_flops(pipe: VideoPipeline, params: GenerationParams) -> int:
    """FLOPs of one denoising step of the video U-Net (both guidance halves), counted."""
    unet = pipe.video.unet
    device, dtype = pipe.placement.device, pipe.placement.dtype
    factor = pipe.video.vae_scale_factor
    latents = torch.zeros(
        2, pipe.preset.num_frames, unet.config.in_channels,
        params.height // factor, params.width // factor, device=device, dtype=dtype,
    )  # fmt: skip
    context = torch.zeros(2, 1, unet.config.cross_attention_dim, device=device, dtype=dtype)
    time_ids = torch.zeros(2, 3, device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        unet(latents, torch.tensor(1.0, device=device), context, added_time_ids=time_ids)
    return int(counter.get_total_flops())


def request_size(args: argparse.Namespace) -> tuple[int, int]:
    """``--size`` as (width, height)."""
    width, height = (int(v) for v in args.size.split("x"))
    return width, height


def median_times(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def timed(
    fn: Callable[[], tuple[np.ndarray, dict[str, float]]], device: torch.device
) -> tuple[np.ndarray, dict[str, float], float]:
    peak_reset(device)
    frames, times = fn()
    return frames, times, peak_gb(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", choices=["full", "tiny"], default="full")
    parser.add_argument("--size", default="1024x576", help="WIDTHxHEIGHT")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="bf16, fp16 or fp32")
    parser.add_argument("--levels", default="none,minimum,medium,high")
    parser.add_argument(
        "--first-frame-steps", type=int, help="override the preset's (25): CPU smoke runs"
    )
    parser.add_argument(
        "--optimize", default="", help="fastsvd side only: e.g. channels_last (FASTSVD_OPTIMIZE)"
    )
    parser.add_argument("--all", action="store_true", help="every figure: bench/gpu_suite.py")
    parser.add_argument(
        "--eager-levels",
        action="store_true",
        help="--all: run each deep_cache level eagerly too, and report compiled against eager",
    )
    parser.add_argument(
        "--optimizations",
        default="channels_last,fuse_qkv,low_memory,fp8",
        help="--all: which optimizations to measure on the compiled pipeline (the CPU dry run "
        "leaves out those whose compiled re-trace only costs time there)",
    )
    parser.add_argument("--out", help="--all: folder for gpu.json and gpu.md (default: $OUT)")
    parser.add_argument("--budget-s", type=float, default=500.0, help="--all: stop after this")
    parser.add_argument("--compile-backend", default="inductor", help="--all: eager on a CPU")
    parser.add_argument("--cache-dir", help="--all: inductor's cache (default: a new temp dir)")
    parser.add_argument(
        "--skip",
        default="",
        help="--all: steps to leave out, comma-separated (start_to_ready); recorded as asked",
    )
    parser.add_argument("--ready-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.all or args.ready_probe:
        import gpu_suite

        (gpu_suite.ready_probe if args.ready_probe else gpu_suite.run_all)(args)
        return

    placement = choose(args.device, args.dtype)
    device = placement.device
    width, height = (int(v) for v in args.size.split("x"))
    stock_pipe = build(args.models, placement)
    if args.first_frame_steps:
        stock_pipe.preset = dataclasses.replace(
            stock_pipe.preset, first_frame_steps=args.first_frame_steps
        )
    pipe = stock_pipe
    names = optimize.parse(args.optimize)
    if names:  # the same weights, optimized, for fastsvd; stock keeps the originals
        pipe = copy.deepcopy(stock_pipe)
        optimize.apply((pipe.video, pipe.first_frame), names)
    base = {"prompt": "A rocket flying that is about to take off", "steps": args.steps}
    base["video_size"] = {"width": width, "height": height}  # type: ignore[assignment]
    params = params_of(TextToVideoInput.model_validate({**base, "deep_cache": "none"}), seed=42)

    # warm-up: kernels chosen, caches filled, for both sides
    run_stock(stock_pipe, params)
    run_fastsvd(pipe, params)
    stock_runs, fast_runs = [], []
    stock_peak = fast_peak = 0.0
    for _ in range(args.repeats):
        frames_stock, times, peak = timed(lambda: run_stock(stock_pipe, params), device)
        stock_runs.append(times)
        stock_peak = max(stock_peak, peak)
        frames_fast, times, peak = timed(lambda: run_fastsvd(pipe, params), device)
        fast_runs.append(times)
        fast_peak = max(fast_peak, peak)
    stock, fast = median_times(stock_runs), median_times(fast_runs)
    flops = unet_flops(pipe, params) * args.steps

    print(
        f"\n{args.models} models, {width}x{height}, {pipe.preset.num_frames} frames, "
        f"{args.steps} steps, {placement.device} {placement.dtype}, torch {torch.__version__}, "
        f"median of {args.repeats}, fastsvd optimizations: {', '.join(names) or 'none'}"
    )
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print(f"video U-Net: {flops / 1e12:.3f} TFLOP for {args.steps} steps (counted)")
    print(f"{'':16}{'stock':>10}{'fastsvd':>10}{'speed-up':>10}")
    for key in (*STAGES, "total"):
        speedup = stock[key] / fast[key] if fast[key] else float("nan")
        print(f"{key + ' s':16}{stock[key]:>10.3f}{fast[key]:>10.3f}{speedup:>9.2f}x")
    achieved = [flops / side["video"] / 1e12 for side in (stock, fast)]
    print(f"{'U-Net TFLOP/s':16}{achieved[0]:>10.1f}{achieved[1]:>10.1f}")
    if device.type == "cuda":
        print(f"{'peak GPU GiB':16}{stock_peak:>10.1f}{fast_peak:>10.1f}")
    same = np.abs(frames_stock.astype(int) - frames_fast.astype(int)).max()
    print(f"max frame difference stock vs fastsvd: {same} levels of 255")

    header = f"{'total s':>10}{'video s':>10}{'speed-up':>10}{'mean |diff|':>13}{'PSNR dB':>9}"
    print(f"\n{'deep_cache':12}{header}")
    reference: np.ndarray | None = None
    none_total = 0.0
    for level in args.levels.split(","):
        level_params = dataclasses.replace(params, deep_cache=level)
        run_fastsvd(pipe, level_params)  # warm-up
        runs = [run_fastsvd(pipe, level_params) for _ in range(args.repeats)]
        frames = runs[-1][0]
        times = median_times([t for _f, t in runs])
        if reference is None:
            reference, none_total = frames, times["total"]
        diff = np.abs(frames.astype(float) - reference.astype(float))
        mse = float((diff**2).mean())
        psnr = float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)
        print(
            f"{level:12}{times['total']:>10.3f}{times['video']:>10.3f}"
            f"{none_total / times['total']:>9.2f}x{diff.mean():>13.2f}{psnr:>9.1f}"
        )


if __name__ == "__main__":
    main()
