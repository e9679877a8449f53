"""The generation pipeline: text -> first frame -> video frames -> MP4, and image -> video.

``VideoPipeline`` holds the loaded models of one preset. It knows nothing of HTTP or queues: it
takes the fal input object, a seed and ``Hooks``, and returns frames; ``to_mp4`` encodes them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline, StableVideoDiffusionPipeline
from PIL import Image

from fastsvd import media
from fastsvd.errors import FastSVDError, GenerationFailed, OutOfMemory
from fastsvd.pipeline import deepcache, optimize, tiny
from fastsvd.pipeline.compile import CompileOptions, compile_regions, configure
from fastsvd.pipeline.device import Placement
from fastsvd.pipeline.encode import encode_mp4
from fastsvd.pipeline.first_frame import draw_first_frame
from fastsvd.pipeline.hooks import NO_HOOKS, Hooks, Stage, StepEvent
from fastsvd.pipeline.loading import load_pretrained
from fastsvd.pipeline.presets import ModelPreset
from fastsvd.pipeline.video import VideoSettings, animate
from fastsvd.schema import (
    DeepCache,
    ImageSize,
    ImageToVideoInput,
    TextToVideoInput,
    closest_preset,
)


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

    def warm_up(self, size: ImageSize | None = None) -> float:
        """Run a two-step request at ``size`` (default: fal's default) for every graph a request
        can use: the first frame, the full U-Net step, each DeepCache cut, the decode. Returns
        the seconds it took (on a compiled pipeline: the compile time)."""
        started = time.perf_counter()
        base = TextToVideoInput.model_validate({"prompt": "warm-up", "steps": 2})
        size = size or base.video_size
        request = base.model_copy(update={"video_size": size})
        if self.first_frame is not None:
            image = self.text_to_video(request, seed=0).first_frame
        else:
            image = Image.new("RGB", (size.width, size.height), (127, 127, 127))
            self._animate(image, size, request, 0, NO_HOOKS)
        # minimum's schedule covers cut 1 (medium's too), high's cut 0: full step, then shallow
        for level in (DeepCache.minimum, DeepCache.high):
            self._animate(
                image, size, request.model_copy(update={"deep_cache": level}), 0, NO_HOOKS
            )
        return time.perf_counter() - started

    def text_to_video(self, request: TextToVideoInput, seed: int, hooks: Hooks = NO_HOOKS) -> Video:
        """Draw the first frame from the prompt, then animate it."""
        if self.first_frame is None:
            raise FastSVDError(f"preset {self.preset.name} was loaded without a first-frame model")
        size = request.video_size
        with _translated_errors(), torch.inference_mode(), self._first_frame_on_device():
            started = time.perf_counter()
            image = draw_first_frame(
                self.first_frame,
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                width=size.width,
                height=size.height,
                seed=seed,
                steps=self.preset.first_frame_steps,
                guidance_scale=self.preset.first_frame_guidance,
                hooks=hooks,
            )
            first_frame_s = time.perf_counter() - started
        hooks.on_first_frame(image)
        video = self._animate(image, size, request, seed, hooks)
        video.timings_s = {Stage.first_frame: first_frame_s, **video.timings_s}
        return video

    def image_to_video(
        self, image: Image.Image, request: ImageToVideoInput, seed: int, hooks: Hooks = NO_HOOKS
    ) -> Video:
        """Animate ``image``, fitted to ``request.video_size`` (or the closest preset)."""
        size = request.video_size or closest_preset(*image.size)
        image = media.fit(image, size.width, size.height)
        hooks.on_first_frame(image)
        return self._animate(image, size, request, seed, hooks)

    def _animate(
        self,
        image: Image.Image,
        size: ImageSize,
        request: TextToVideoInput | ImageToVideoInput,
        seed: int,
        hooks: Hooks,
    ) -> Video:
        timings: dict[Stage, float] = {}

        def timed_hooks_step(event: StepEvent) -> None:
            now = time.perf_counter()
            timings[event.stage] = timings.get(event.stage, 0.0) + now - marks[0]
            marks[0] = now
            hooks.on_step(event)

        settings = VideoSettings(
            width=size.width,
            height=size.height,
            num_frames=self.preset.num_frames,
            steps=request.steps,
            fps=request.fps,
            motion_bucket_id=request.motion_bucket_id,
            noise_aug_strength=request.cond_aug,
            seed=seed,
            min_guidance_scale=self.preset.min_guidance_scale,
            max_guidance_scale=self.preset.max_guidance_scale,
            decode_chunk_size=self._decode_chunk_size(size),
            cache=deepcache.LEVELS[request.deep_cache],
        )
        marks = [time.perf_counter()]
        inner = Hooks(on_step=timed_hooks_step, should_cancel=hooks.should_cancel)
        with _translated_errors(), torch.inference_mode():
            frames = animate(self.video, image, settings, inner, self.graphs)
        # [F, H, W, 3] float in [0, 1] -> uint8, rounded as diffusers' own exporters do
        pixels = (frames * 255).round().clip(0, 255).astype(np.uint8)
        return Video(
            frames=pixels, first_frame=image, seed=seed, fps=request.fps, timings_s=timings
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

    def _decode_chunk_size(self, size: ImageSize) -> int:
        preset = self.preset.decode_chunk_size
        if not self.low_memory or self.placement.device.type != "cuda":
            return preset
        free_bytes, _total = torch.cuda.mem_get_info(self.placement.device)
        return min(preset, decode_chunk_for(free_bytes, size, self.placement.dtype.itemsize))

    def to_mp4(self, video: Video, hooks: Hooks = NO_HOOKS) -> bytes:
        """Encode ``video`` as H.264 MP4 at its fps, one ``export`` step per frame."""
        total = len(video.frames)
        started = time.perf_counter()
        data = encode_mp4(
            video.frames,
            video.fps,
            before_frame=lambda i: hooks.check_cancel(Stage.export, i + 1),
            after_frame=lambda i: hooks.on_step(StepEvent(Stage.export, i + 1, total)),
        )
        video.timings_s[Stage.export] = time.perf_counter() - started
        return data


# Bytes the temporal VAE decoder holds per decoded frame, per output pixel and byte of dtype: an
# estimate (the 128-channel full-resolution activations, a few alive at once), to be replaced
# by the device run's measured peak per chunk (bench/gpu.py, "decode_chunks").
DECODE_BYTES_PER_PIXEL_BYTE = 128 * 6


def decode_chunk_for(free_bytes: int, size: ImageSize, dtype_bytes: int) -> int:
    """The most frames (1..25) one decode call can take in ``free_bytes``, keeping a quarter."""
    per_frame = size.width * size.height * dtype_bytes * DECODE_BYTES_PER_PIXEL_BYTE
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
