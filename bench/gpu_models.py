"""What the device run measures with: the models, both sides' requests, their stage times.

The full-size models are built from their real configs with random weights
(``pipeline/full_size.py``), created directly on the device in its dtype (bf16 on a GPU): no
fp32 copy is made, no weight is downloaded. The tiny ones are the tiny preset's.

The stock side is diffusers' own pipeline classes, ``StableDiffusionXLPipeline`` and
``StableVideoDiffusionPipeline``, built on the same components (the same weights, in memory
once) with their own schedulers, and called as a diffusers user calls them.

Stage times on both sides come from this module's clock: a stage ends at a device sync after its
last step (the first frame when its picture exists, the video after its last denoising step, the
decode when the frames are on the host, the export when the MP4 is written).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    StableVideoDiffusionPipeline,
    UNet2DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from torch.utils.flop_counter import FlopCounterMode

from fastsvd.hooks import Hooks, Stage, StepEvent
from fastsvd.pipeline import full_size
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.device import Placement
from fastsvd.pipeline.encode import encode_mp4
from fastsvd.pipeline.loading import assemble, load_pipeline
from fastsvd.pipeline.params import GenerationParams
from fastsvd.pipeline.presets import FEW_STEP, STANDARD, SVD_XT_1_1, TINY
from gpu_record import TIMES

Frames = np.ndarray  # [frames, height, width, 3] uint8
Times = dict[str, float]  # first_frame, video, decode, export, total (seconds)
OnStage = Callable[[str, float], None]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> float:
    """Start a peak measurement; returns the bytes allocated now (NaN off CUDA)."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.reset_peak_memory_stats(device)
    return float(torch.cuda.memory_allocated(device))


def peak(device: torch.device) -> float:
    """The most bytes allocated since ``reset_peak`` (NaN off CUDA)."""
    return float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else float("nan")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Modules created inside get their weights in ``dtype`` from the start."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def build(models: str, placement: Placement) -> VideoPipeline:
    """Both families (all four endpoints' models), tiny or full size, on ``placement``."""
    with default_dtype(placement.dtype):
        if models == "tiny":
            return load_pipeline(TINY, placement)
        video = full_size.build_video(placement.device, placement.dtype)
        first_frame = full_size.build_first_frame(placement.device, placement.dtype)
        # the few-step family on the same components: AnimateLCM-SVD-xt's and SDXL-Lightning's
        # U-Nets (each its teacher's architecture) at full size, random weights
        with torch.device(placement.device):
            video_unet = UNetSpatioTemporalConditionModel.from_config(video.unet.config)
            frame_unet = UNet2DConditionModel.from_config(first_frame.unet.config)
    models = {(STANDARD, Stage.video): video, (STANDARD, Stage.first_frame): first_frame}
    for stage, base, unet in (
        (Stage.video, video, video_unet),
        (Stage.first_frame, first_frame, frame_unet),
    ):
        few_step = SVD_XT_1_1.family(FEW_STEP)
        models[(FEW_STEP, stage)] = assemble(
            stage, base, unet.to(dtype=placement.dtype), few_step.sampler
        )
    return VideoPipeline(SVD_XT_1_1, placement, models)


class Stock:
    """Stock diffusers on ``pipe``'s components: its own pipeline objects and schedulers."""

    def __init__(self, pipe: VideoPipeline) -> None:
        assert pipe.first_frame is not None
        base = pipe.first_frame
        self.first_frame = StableDiffusionXLPipeline(
            **{
                **base.components,
                "scheduler": EulerDiscreteScheduler.from_config(base.scheduler.config),
            },
            force_zeros_for_empty_prompt=base.config.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
        video = pipe.video
        self.video = StableVideoDiffusionPipeline(
            **{
                **video.components,
                "scheduler": EulerDiscreteScheduler.from_config(video.scheduler.config),
            }
        )
        for stock in (self.first_frame, self.video):
            stock.set_progress_bar_config(disable=True)
        self.pipe = pipe

    def run(
        self, params: GenerationParams, on_stage: OnStage | None = None
    ) -> tuple[Frames, Times]:
        """Text to MP4: the SDXL pipeline, then the SVD pipeline, then the same MP4 encoder."""
        preset = self.pipe.preset

        def on_step_end(_p: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if i == params.steps - 1:
                clock.mark("video")
            return kwargs

        size = {"width": params.width, "height": params.height}
        clock = Clock(self.pipe.placement.device, on_stage)
        image = self.first_frame(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            **size,
            num_inference_steps=preset.base.first_frame_steps,
            guidance_scale=preset.base.first_frame_guidance,
            generator=torch.Generator("cpu").manual_seed(params.seed),
        ).images[0]
        clock.mark("first_frame")
        frames = self.video(
            image,
            **size,
            num_frames=preset.num_frames,
            num_inference_steps=params.steps,
            fps=params.fps,
            motion_bucket_id=params.motion_bucket_id,
            noise_aug_strength=params.noise_aug_strength,
            min_guidance_scale=preset.base.min_guidance_scale,
            max_guidance_scale=preset.base.max_guidance_scale,
            decode_chunk_size=preset.decode_chunk_size,
            generator=torch.Generator("cpu").manual_seed(params.seed),
            output_type="np",
            callback_on_step_end=on_step_end,
        ).frames[0]
        # float [0, 1] -> uint8, rounded as fastsvd and diffusers' exporters round
        pixels = (frames * 255).round().clip(0, 255).astype(np.uint8)
        clock.mark("decode")
        encode_mp4(pixels, params.fps)
        clock.mark("export")
        return pixels, clock.times()


def run_fastsvd(
    pipe: VideoPipeline, params: GenerationParams, on_stage: OnStage | None = None
) -> tuple[Frames, Times]:
    """Text to MP4 through fastsvd's pipeline, timed by the same clock as the stock side."""

    def on_step(event: StepEvent) -> None:
        if event.stage == Stage.video and event.step == event.total:
            clock.mark("video")

    clock = Clock(pipe.placement.device, on_stage)
    # the first frame is a picture on the host when it is handed over: nothing in flight
    hooks = Hooks(on_step=on_step, on_first_frame=lambda _image: clock.mark("first_frame"))
    video = pipe.generate(params, hooks)
    clock.mark("decode")
    pipe.to_mp4(video)
    clock.mark("export")
    return video.frames, clock.times()


class Clock:
    """A request's stage ends, each taken after a device sync; ``on_stage`` hears each one
    (its name and seconds) as it ends."""

    def __init__(self, device: torch.device, on_stage: OnStage | None) -> None:
        self.device, self.on_stage = device, on_stage
        sync(device)
        self.marks = {"start": time.perf_counter()}

    def mark(self, stage: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        seconds = now - max(self.marks.values())
        self.marks[stage] = now
        if self.on_stage is not None:
            self.on_stage(stage, seconds)

    def times(self) -> Times:
        order = ("start", *TIMES[:-1])
        times = {b: self.marks[b] - self.marks[a] for a, b in itertools.pairwise(order)}
        return times | {"total": self.marks["export"] - self.marks["start"]}


def unet_flops_per_step(
    unet: torch.nn.Module, pipe: VideoPipeline, params: GenerationParams, batch: int
) -> int:
    """FLOPs of one video U-Net call at the request's shapes (``batch`` 2: guided), counted on
    a twin of ``unet`` on the meta device: the same operators and shapes, nothing computed."""
    factor = pipe.video.vae_scale_factor
    config: Any = unet.config
    meta = torch.device("meta")
    with meta:
        twin = type(unet).from_config(config).to(meta)  # and the few made on the CPU
        # [batch, frames, noisy + conditioning latent channels, h, w]
        latents = torch.zeros(
            batch, pipe.preset.num_frames, config.in_channels,
            params.height // factor, params.width // factor,
        )  # fmt: skip
        context = torch.zeros(batch, 1, config.cross_attention_dim)
        time_ids = torch.zeros(batch, 3)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:  # tensors made inside the forward: meta too
            twin(latents, torch.tensor(1.0), context, added_time_ids=time_ids)
    return int(counter.get_total_flops())


def deviation(frames: Frames, reference: Frames) -> dict[str, Any]:
    """Max and mean absolute difference in levels of 255."""
    diff = np.abs(frames.astype(np.int16) - reference.astype(np.int16))
    return {"max": int(diff.max()), "mean": round(float(diff.mean()), 4)}
