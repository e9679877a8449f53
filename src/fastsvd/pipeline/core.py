"""The generation pipeline: text -> first frame -> video frames -> MP4, and image -> video.

``VideoPipeline`` holds the loaded models of one preset. It knows nothing of HTTP, queues or the
fal inputs: ``generate`` takes ``GenerationParams`` and ``Hooks`` and returns frames, with the
seconds each stage took; ``to_mp4`` encodes them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline, StableVideoDiffusionPipeline
from PIL import Image

from fastsvd import constants as c
from fastsvd import media
from fastsvd.errors import FastSVDError, GenerationFailed, OutOfMemory
from fastsvd.pipeline import deepcache, optimize, tiny
from fastsvd.pipeline.compile import CompileOptions, compile_regions, configure
from fastsvd.pipeline.device import Placement
from fastsvd.pipeline.encode import encode_mp4
from fastsvd.pipeline.first_frame import draw_first_frame
from fastsvd.pipeline.hooks import NO_HOOKS, Hooks, Stage, StageClock, StepEvent
from fastsvd.pipeline.loading import load_pretrained
from fastsvd.pipeline.params import GenerationParams
from fastsvd.pipeline.presets import ModelPreset
from fastsvd.pipeline.video import VideoSettings, animate

# fal's default video_size (landscape_16_9), where ``warm_up`` compiles
WARM_UP_SIZE = (1024, 576)


@dataclass
class Video:
    """Generated frames and what made them."""

    frames: np.ndarray  # [frames, height, width, 3] uint8 RGB
    first_frame: Image.Image
    seed: int
    fps: int
    timings_s: dict[Stage, float] = field(default_factory=dict)


class VideoPipeline:
    """The loaded models of one preset, ready to generate one request at a time."""

    def __init__(
        self,
        preset: ModelPreset,
        placement: Placement,
        video: StableVideoDiffusionPipeline,
        first_frame: StableDiffusionXLPipeline | None,
    ) -> None:
        self.preset = preset
        self.placement = placement
        self.video = video
        self.first_frame = first_frame
        for pipe in (video, first_frame):
            if pipe is not None:
                pipe.to(placement.device)
                if pipe.dtype != placement.dtype:
                    pipe.to(dtype=placement.dtype)
                pipe.set_progress_bar_config(disable=True)
        # the video U-Net's forwards, eager until ``compile``; one full graph keeps every cut
        self.graphs = deepcache.UNetGraphs(video.unet, deepcache.BRANCHES)
        self.compiled: CompileOptions | None = None
        # low-memory mode (24 GB cards): the first-frame model waits on the CPU between requests
        # and the decode chunk is picked from free GPU memory (``optimize`` "low_memory")
        self.low_memory = False

    def compile(self, options: CompileOptions) -> None:
        """Compile the models as ``options`` say (``pipeline/compile.py``); lazily: the graphs
        are built on the first call, which ``warm_up`` makes."""
        configure()
        video_unet, first = self.video.unet, self.first_frame
        if options.regional:
            compile_regions(video_unet, options)
            if first is not None and options.first_frame:
                compile_regions(first.unet, options)
        else:
            self.graphs.compile(options.wrap)
            if first is not None and options.first_frame:
                options.module(first.unet)
        if options.decoders:
            options.module(self.video.vae.decoder)
            if first is not None:
                options.module(first.vae.decoder)
        self.compiled = options

    def warm_up(self, size: tuple[int, int] = WARM_UP_SIZE) -> float:
        """Run a two-step request at ``size`` (width, height; default: fal's default) for every
        graph a request can use: the first frame, the full U-Net step, each DeepCache cut, the
        decode. Returns the seconds it took (on a compiled pipeline: the compile time)."""
        started = time.perf_counter()
        width, height = size
        params = GenerationParams(
            width=width,
            height=height,
            steps=2,
            fps=c.DEFAULT_FPS,
            motion_bucket_id=c.DEFAULT_MOTION_BUCKET_ID,
            noise_aug_strength=c.DEFAULT_COND_AUG,
            seed=0,
            prompt="warm-up",
            negative_prompt=c.DEFAULT_NEGATIVE_PROMPT,
        )
        if self.first_frame is not None:
            image = self.generate(params).first_frame
        else:
            image = Image.new("RGB", size, (127, 127, 127))
            self.generate(replace(params, prompt=None, image=image))
        # minimum's schedule covers cut 1 (medium's too), high's cut 0: full step, then shallow
        for level in ("minimum", "high"):
            self.generate(replace(params, prompt=None, image=image, deep_cache=level))
        return time.perf_counter() - started

    def generate(self, params: GenerationParams, hooks: Hooks = NO_HOOKS) -> Video:
        """The video ``params`` ask for: the first frame drawn from ``params.prompt`` or fitted
        from ``params.image``, passed to ``hooks.on_first_frame``, then animated.

        The video's ``timings_s`` holds the seconds of each stage that ran.
        """
        if params.deep_cache not in deepcache.LEVELS:
            raise ValueError(f"no deep_cache level {params.deep_cache!r}")
        clock = StageClock(hooks)
        if params.prompt is not None:
            image = self._draw_first_frame(params.prompt, params, clock.hooks)
            clock.lap(Stage.first_frame)  # the tail after its last step: VAE decode, offload
        elif params.image is not None:
            image = media.fit(params.image, params.width, params.height)
        else:  # GenerationParams refuses this; the branch is for the type checker
            raise ValueError("GenerationParams takes a prompt or an image")
        hooks.on_first_frame(image)
        clock.restart()  # what the caller does with the first frame is no stage's time
        settings = VideoSettings(
            width=params.width,
            height=params.height,
            num_frames=self.preset.num_frames,
            steps=params.steps,
            fps=params.fps,
            motion_bucket_id=params.motion_bucket_id,
            noise_aug_strength=params.noise_aug_strength,
            seed=params.seed,
            min_guidance_scale=self.preset.min_guidance_scale,
            max_guidance_scale=self.preset.max_guidance_scale,
            decode_chunk_size=self._decode_chunk_size(params.width, params.height),
            cache=deepcache.LEVELS[params.deep_cache],
        )
        with _translated_errors(), torch.inference_mode():
            frames = animate(self.video, image, settings, clock.hooks, self.graphs)
        # [F, H, W, 3] float in [0, 1] -> uint8, rounded as diffusers' own exporters do
        pixels = (frames * 255).round().clip(0, 255).astype(np.uint8)
        return Video(
            frames=pixels,
            first_frame=image,
            seed=params.seed,
            fps=params.fps,
            timings_s=clock.timings_s,
        )

    def _draw_first_frame(self, prompt: str, params: GenerationParams, hooks: Hooks) -> Image.Image:
        """Stage 1: ``prompt`` rendered at the video's size."""
        if self.first_frame is None:
            raise FastSVDError(f"preset {self.preset.name} was loaded without a first-frame model")
        with _translated_errors(), torch.inference_mode(), self._first_frame_on_device():
            return draw_first_frame(
                self.first_frame,
                prompt=prompt,
                negative_prompt=params.negative_prompt,
                width=params.width,
                height=params.height,
                seed=params.seed,
                steps=self.preset.first_frame_steps,
                guidance_scale=self.preset.first_frame_guidance,
                hooks=hooks,
            )

    @contextlib.contextmanager
    def _first_frame_on_device(self) -> Iterator[None]:
        """In low-memory mode, the first-frame model is on the GPU for stage 1 only."""
        if not self.low_memory or self.first_frame is None:
            yield
            return
        self.first_frame.to(self.placement.device)
        try:
            yield
        finally:
            self.first_frame.to("cpu")
            if self.placement.device.type == "cuda":
                torch.cuda.empty_cache()

    def _decode_chunk_size(self, width: int, height: int) -> int:
        preset = self.preset.decode_chunk_size
        if not self.low_memory or self.placement.device.type != "cuda":
            return preset
        free_bytes, _total = torch.cuda.mem_get_info(self.placement.device)
        dtype_bytes = self.placement.dtype.itemsize
        return min(preset, decode_chunk_for(free_bytes, width, height, dtype_bytes))

    def to_mp4(self, video: Video, hooks: Hooks = NO_HOOKS) -> bytes:
        """Encode ``video`` as H.264 MP4 at its fps, one ``export`` step per frame."""
        total = len(video.frames)
        clock = StageClock(hooks)
        data = encode_mp4(
            video.frames,
            video.fps,
            before_frame=lambda i: hooks.check_cancel(Stage.export, i + 1),
            after_frame=lambda i: clock.hooks.on_step(StepEvent(Stage.export, i + 1, total)),
        )
        clock.lap(Stage.export)  # the tail after the last frame: the MP4's index
        video.timings_s.update(clock.timings_s)
        return data


# Bytes the temporal VAE decoder holds per decoded frame, per output pixel and byte of dtype: an
# estimate (the 128-channel full-resolution activations, a few alive at once), to be replaced
# by the device run's measured peak per chunk (bench/gpu.py, "decode_chunks").
DECODE_BYTES_PER_PIXEL_BYTE = 128 * 6


def decode_chunk_for(free_bytes: int, width: int, height: int, dtype_bytes: int) -> int:
    """The most frames (1..25) one decode call can take in ``free_bytes``, keeping a quarter."""
    per_frame = width * height * dtype_bytes * DECODE_BYTES_PER_PIXEL_BYTE
    return max(1, min(25, int(free_bytes * 0.75) // per_frame))


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    """Turns torch's out-of-memory and runtime errors into fastsvd errors, at one boundary."""
    try:
        yield
    except FastSVDError:
        raise
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(f"out of GPU memory: {str(exc).splitlines()[0]}") from exc
    except RuntimeError as exc:
        raise GenerationFailed(f"generation failed: {str(exc).splitlines()[0]}") from exc


def load_pipeline(
    preset: ModelPreset,
    placement: Placement,
    *,
    video_model: str | None = None,
    first_frame_model: str | None = None,
    with_first_frame: bool = True,
    optimizations: tuple[str, ...] = (),
    compile: CompileOptions | None = None,
    warm_up: bool = False,
) -> VideoPipeline:
    """Load ``preset``'s models onto ``placement``; ``*_model`` override its weights' location.

    With ``compile`` the models are compiled, and with ``warm_up`` one short request per
    ``deep_cache`` level runs at the default size, so no request pays for compilation.
    """
    video_model = video_model or preset.video_model
    first_frame_model = first_frame_model or preset.first_frame_model
    video = (
        load_pretrained(
            StableVideoDiffusionPipeline,
            video_model,
            dtype=placement.dtype,
            role="video (SVD-XT)",
            env_var="FASTSVD_VIDEO_MODEL",
        )
        if video_model
        else tiny.build_video()
    )
    first_frame = None
    if with_first_frame:
        first_frame = (
            load_pretrained(
                StableDiffusionXLPipeline,
                first_frame_model,
                dtype=placement.dtype,
                role="first-frame (SDXL)",
                env_var="FASTSVD_FIRST_FRAME_MODEL",
            )
            if first_frame_model
            else tiny.build_first_frame()
        )
    pipeline = VideoPipeline(preset, placement, video, first_frame)
    optimize.apply((video, first_frame), optimizations)
    pipeline.low_memory = "low_memory" in optimizations
    if pipeline.low_memory and first_frame is not None:
        first_frame.to("cpu")
    if compile is not None:
        pipeline.compile(compile)
    if warm_up:
        pipeline.warm_up()
    return pipeline
