"""The generation pipeline: text -> first frame -> video frames -> MP4, and image -> video.

``VideoPipeline`` holds the loaded models of one preset. It knows nothing of HTTP, queues or the
fal inputs: ``generate`` takes ``GenerationParams`` and ``Hooks`` and returns frames, with the
seconds each stage took; ``stream`` makes them as they are read, for ``to_mp4`` to encode as
they arrive, so a long video (``chain.py``) is never in memory whole.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline, StableVideoDiffusionPipeline
from PIL import Image

from fastsvd import constants as c
from fastsvd import media
from fastsvd.errors import FastSVDError, GenerationFailed, GpuFault, OutOfMemory
from fastsvd.hooks import NO_HOOKS, Hooks, Stage, StageClock, StepEvent
from fastsvd.pipeline import deepcache
from fastsvd.pipeline.chain import chain
from fastsvd.pipeline.compile import (
    CompileOptions,
    GraphState,
    compile_regions,
    configure,
    set_state,
)
from fastsvd.pipeline.device import Placement, is_gpu_fault
from fastsvd.pipeline.encode import encode_mp4
from fastsvd.pipeline.first_frame import draw_first_frame
from fastsvd.pipeline.memory import Plan, component_parts, cpu_plan
from fastsvd.pipeline.params import GenerationParams
from fastsvd.pipeline.presets import Family, ModelKey, ModelPreset
from fastsvd.pipeline.video import VideoSettings, animate
from fastsvd.schema import DeepCache

# FASTSVD_FPS_CONDITIONING: the video model is conditioned on the preset's fps id (what it was
# fine-tuned at), or on the request's fps - 1 (what diffusers' pipeline does)
FPS_FROM_PRESET = "preset"
FPS_FROM_REQUEST = "request"

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

    @property
    def num_frames(self) -> int:
        return len(self.frames)


@dataclass
class VideoStream:
    """A video being made: its first frame, then its frames a segment at a time, each made
    when ``segments`` is read (``VideoPipeline.to_mp4`` encodes them as they come)."""

    segments: Iterator[np.ndarray]  # [n, height, width, 3] uint8 RGB each, num_frames in all
    num_frames: int
    first_frame: Image.Image
    seed: int
    fps: int
    clock: StageClock  # the stages' seconds, counted as segments are made and encoded

    @property
    def timings_s(self) -> dict[Stage, float]:
        return self.clock.timings_s

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame, [height, width, 3], as the segments are made."""
        for segment in self.segments:
            yield from segment


class VideoPipeline:
    """The loaded models of one preset, ready to generate one request at a time.

    ``models`` holds a pipeline per (family, stage) loaded (``presets``: each family a first-frame
    and a video model). A distilled family's U-Net runs on the base family's components where
    both are loaded: one VAE, image encoder, text encoder pair, in memory once. ``families``
    holds how each family runs (its guidance, steps), as the settings left it.
    """

    def __init__(
        self,
        preset: ModelPreset,
        placement: Placement,
        models: dict[ModelKey, Any],
        *,
        families: dict[str, Family] | None = None,
        plan: Plan | None = None,
    ) -> None:
        if not any(stage is Stage.video for _family, stage in models):
            raise ValueError("a VideoPipeline needs a video model")
        self.preset = preset
        self.placement = placement
        self.models = models
        self.families = families or {f.key: f for f in preset.families}
        # where each model waits between stages (pipeline/memory.py); no GPU: where it is
        self.plan = plan or cpu_plan({}, preset.decode_chunk_size)
        for pipe in self.pipes():
            pipe.set_progress_bar_config(disable=True)
        self._place()
        # the base video U-Net's forwards, eager until ``compile``; one full graph keeps every
        # cut (DeepCache: the base family's only)
        base_video = self.model(preset.base.key, Stage.video)
        self.graphs = (
            deepcache.UNetGraphs(base_video.unet, deepcache.BRANCHES)
            if base_video is not None
            else None
        )
        self.compiled: CompileOptions | None = None
        # where the video's fps conditioning comes from: FPS_FROM_PRESET or FPS_FROM_REQUEST
        self.fps_conditioning = FPS_FROM_PRESET

    def model(self, family: str, stage: Stage) -> Any:
        """The loaded pipeline of ``family``'s model of ``stage``; None: not loaded."""
        return self.models.get((family, stage))

    @property
    def video(self) -> StableVideoDiffusionPipeline:
        """The base family's video model (SVD-XT)."""
        return self._loaded(self.preset.base.key, Stage.video)

    @property
    def first_frame(self) -> StableDiffusionXLPipeline | None:
        """The base family's first-frame model (SDXL base); None: not loaded."""
        pipe: StableDiffusionXLPipeline | None = self.model(self.preset.base.key, Stage.first_frame)
        return pipe

    def _loaded(self, family: str, stage: Stage) -> Any:
        pipe = self.model(family, stage)
        if pipe is None:
            name = self.families[family].name if family in self.families else family
            raise FastSVDError(
                f"preset {self.preset.name} was loaded without the {name} "
                f"{'video' if stage is Stage.video else 'first-frame'} model"
            )
        return pipe

    def pipes(self) -> list[StableVideoDiffusionPipeline | StableDiffusionXLPipeline]:
        """The loaded diffusers pipelines (they may share components)."""
        return list(self.models.values())

    def compile(self, options: CompileOptions) -> None:
        """Compile the models as ``options`` say (``pipeline/compile.py``); lazily: the graphs
        are built on the first call, which ``warm_up`` makes."""
        configure()
        options = replace(options, guards=[])  # this pipeline's own graphs
        base = self.preset.base.key
        # whole forwards: the first frames' U-Nets, the distilled videos' (no DeepCache)
        whole = [
            pipe.unet
            for (family, stage), pipe in self.models.items()
            if (stage is Stage.first_frame and options.first_frame)
            or (stage is Stage.video and family != base)
        ]
        if options.regional:
            teacher = self.model(base, Stage.video)
            for unet in [*whole, *([teacher.unet] if teacher is not None else [])]:
                compile_regions(unet, options)
        else:
            if self.graphs is not None:
                self.graphs.compile(options.wrap)
            for unet in whole:
                options.module(unet)
        if options.decoders:  # shared between a family's pipelines: each compiled once
            decoders = {id(p.vae.decoder): p.vae.decoder for p in self.pipes()}
            for decoder in decoders.values():
                options.module(decoder)
        set_state(options.guards, GraphState.eager)  # until warmed up and swapped in
        self.compiled = options

    def warm_up(self, size: tuple[int, int] = WARM_UP_SIZE) -> float:
        """Run every warm-up step (``warm_up_steps``), then swap the compiled graphs in.
        Returns the seconds it took (on a compiled pipeline: the compile time)."""
        started = time.perf_counter()
        for step in self.warm_up_steps(size):
            step()
        self.swap_in()
        return time.perf_counter() - started

    def warm_up_steps(self, size: tuple[int, int] = WARM_UP_SIZE) -> list[Callable[[], None]]:
        """Two-step requests at ``size`` (width, height; default: fal's default) for every
        graph a request can use: the first frame, the full U-Net step, each DeepCache cut, the
        decode. Each one compiles the graphs it runs; until ``swap_in``, requests run eagerly
        (a worker runs them one at a time between jobs: ``compile.py``)."""
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
        grey = Image.new("RGB", size, (127, 127, 127))
        image = [grey]  # the first frame the 20-step text-to-video step draws

        def warming(params: GenerationParams, keep_frame: bool = False) -> Callable[[], None]:
            def step() -> None:
                guards = self.compiled.guards if self.compiled is not None else []
                set_state(guards, GraphState.warming)
                try:
                    given = None if params.prompt else image[0]
                    video = self.generate(replace(params, image=given))
                finally:
                    set_state(guards, GraphState.eager)
                if keep_frame:
                    image[0] = video.first_frame

            return step

        steps = []
        base = self.preset.base.key
        if self.model(base, Stage.video) is not None:
            if self.first_frame is not None:
                steps.append(warming(params, keep_frame=True))
            else:
                steps.append(warming(replace(params, prompt=None, image=grey)))
            # minimum's schedule covers cut 1 (medium's too), high's cut 0: full, then shallow
            for level in (DeepCache.minimum, DeepCache.high):
                steps.append(warming(replace(params, prompt=None, image=grey, deep_cache=level)))
        for family in self.families:  # the distilled ones: no DeepCache, no negative prompt
            if family == base or self.model(family, Stage.video) is None:
                continue
            few = replace(params, family=family, negative_prompt="")
            if self.model(family, Stage.first_frame) is None:
                few = replace(few, prompt=None, image=grey)
            steps.append(warming(few))
        return steps

    def swap_in(self) -> None:
        """Requests run the compiled graphs from now on, at the warmed-up shapes."""
        if self.compiled is not None:
            set_state(self.compiled.guards, GraphState.compiled)

    def compile_on_first_use(self) -> None:
        """Every call compiles, at any shape (``fastsvd generate``'s one request)."""
        if self.compiled is not None:
            set_state(self.compiled.guards, GraphState.warming)

    def generate(self, params: GenerationParams, hooks: Hooks = NO_HOOKS) -> Video:
        """The video ``params`` ask for, every frame in memory (``stream``, collected).

        The video's ``timings_s`` holds the seconds of each stage that ran.
        """
        stream = self.stream(params, hooks)
        return Video(
            frames=np.concatenate(list(stream.segments)),
            first_frame=stream.first_frame,
            seed=stream.seed,
            fps=stream.fps,
            timings_s=stream.timings_s,
        )

    def stream(self, params: GenerationParams, hooks: Hooks = NO_HOOKS) -> VideoStream:
        """The video ``params`` ask for, made as it is read: the first frame drawn from
        ``params.prompt`` or fitted from ``params.image`` and passed to
        ``hooks.on_first_frame`` now; then, as ``segments`` is iterated, each segment animated
        (``chain.py``: one segment for a video of the model's length).
        """
        family = self.families[params.family]
        video = self._loaded(family.key, Stage.video)
        graphs = self.graphs if family.key == self.preset.base.key else None
        if graphs is None and params.deep_cache is not DeepCache.none:
            raise ValueError(f"the {family.name} video model runs without DeepCache")
        self.plan.check_size(params.width, params.height)
        clock = StageClock(hooks)
        if params.prompt is not None:
            image = self._draw_first_frame(family, params.prompt, params, clock.hooks)
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
            fps_id=self.fps_id(params.fps),
            motion_bucket_id=params.motion_bucket_id,
            noise_aug_strength=params.noise_aug_strength,
            seed=params.seed,
            min_guidance_scale=family.min_guidance_scale,
            max_guidance_scale=family.max_guidance_scale,
            decode_chunk_size=self.plan.decode_chunk,
            cache=deepcache.LEVELS[params.deep_cache],
        )

        def segment(conditioning: Image.Image, seed: int, segment_hooks: Hooks) -> np.ndarray:
            # offloaded models go to the GPU for one segment at a time: between segments the
            # caller encodes, and a cancelled or failed stream leaves nothing on the GPU
            with _translated_errors(), torch.inference_mode(), self._on_device(video):
                frames = animate(
                    video, conditioning, replace(settings, seed=seed), segment_hooks, graphs
                )
            # [F, H, W, 3] float in [0, 1] -> uint8, rounded as diffusers' own exporters do
            pixels: np.ndarray = (frames * 255).round().clip(0, 255).astype(np.uint8)
            return pixels

        segments = chain(
            segment,
            image,
            num_frames=params.num_frames,
            segment_frames=settings.num_frames,
            seed=params.seed,
            color_match=params.color_match,
            hooks=clock.hooks,
        )
        return VideoStream(
            segments=segments,
            num_frames=params.num_frames,
            first_frame=image,
            seed=params.seed,
            fps=params.fps,
            clock=clock,
        )

    def fps_id(self, fps: int) -> int:
        """The fps conditioning of a request at ``fps``: the preset's (what its model was
        fine-tuned at), or with ``fps_conditioning == "request"`` diffusers' ``fps - 1``."""
        return fps - 1 if self.fps_conditioning == FPS_FROM_REQUEST else self.preset.fps_id

    def _draw_first_frame(
        self, family: Family, prompt: str, params: GenerationParams, hooks: Hooks
    ) -> Image.Image:
        """Stage 1: ``prompt`` rendered at the video's size, by the family's first-frame model."""
        pipe = self._loaded(family.key, Stage.first_frame)
        with _translated_errors(), torch.inference_mode(), self._on_device(pipe):
            return draw_first_frame(
                pipe,
                prompt=prompt,
                negative_prompt=params.negative_prompt,
                width=params.width,
                height=params.height,
                seed=params.seed,
                steps=family.first_frame_steps,
                guidance_scale=family.first_frame_guidance,
                hooks=hooks,
            )

    def _parts(self) -> dict[int, tuple[str, torch.nn.Module]]:
        """The loaded models by id: each one's part name (``memory.component_parts``) and
        module; a component two pipelines share has one part whatever the family."""
        parts: dict[int, tuple[str, torch.nn.Module]] = {}
        for key, pipe in self.models.items():
            for component, part in component_parts(key).items():
                module = pipe.components.get(component)
                if isinstance(module, torch.nn.Module):
                    parts.setdefault(id(module), (part, module))
        return parts

    def _place(self) -> None:
        """Every model where the plan keeps it between stages, in the placement's dtype."""
        cpu = torch.device("cpu")
        for name, module in self._parts().values():
            device = cpu if name in self.plan.offloaded else self.placement.device
            module.to(device=device, dtype=self.placement.dtype)

    def use_plan(self, plan: Plan) -> None:
        """Follow ``plan`` from now on: each model moves to where it keeps it between stages,
        and the decode chunk is its. (Workers load under their plan; the device run switches.)"""
        self.plan = plan
        self._place()

    @contextlib.contextmanager
    def _on_device(self, pipe: Any) -> Iterator[None]:
        """The models of ``pipe`` that the plan keeps on the CPU are on the GPU for one stage."""
        offloaded = self.plan.offloaded
        moved = [
            module
            for name, module in self._parts().values()
            if name in offloaded and any(module is m for m in pipe.components.values())
        ]
        for module in moved:
            module.to(self.placement.device)
        try:
            yield
        finally:
            for module in moved:
                module.to("cpu")
            if moved and self.placement.device.type == "cuda":
                torch.cuda.empty_cache()

    def to_mp4(self, video: Video | VideoStream, hooks: Hooks = NO_HOOKS) -> bytes:
        """Encode ``video`` as H.264 MP4 at its fps, one ``export`` step per frame; a stream's
        frames as they are made (its segments are made here, the frames encoded as each one
        arrives; its steps, export's included, go to the hooks it was made with)."""
        total = video.num_frames
        # a stream's clock: its encode steps fall between its segments' steps
        clock = video.clock if isinstance(video, VideoStream) else StageClock(hooks)
        data = encode_mp4(
            video.frames() if isinstance(video, VideoStream) else video.frames,
            video.fps,
            before_frame=lambda i: hooks.check_cancel(Stage.export, i + 1),
            after_frame=lambda i: clock.hooks.on_step(StepEvent(Stage.export, i + 1, total)),
        )
        clock.lap(Stage.export)  # the tail after the last frame: the MP4's index
        video.timings_s.update(clock.timings_s)
        return data


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    """Turns torch's out-of-memory and runtime errors into fastsvd errors, at one boundary.

    A GPU fault (an error that leaves the CUDA context unusable) becomes ``GpuFault``, which
    the worker does not survive.
    """
    try:
        yield
    except FastSVDError:
        raise
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(f"out of GPU memory: {_first_line(exc)}") from exc
    except RuntimeError as exc:  # torch.AcceleratorError included
        if is_gpu_fault(exc):
            raise GpuFault(f"the GPU failed: {_first_line(exc)}") from exc
        raise GenerationFailed(f"generation failed: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def free_memory() -> None:
    """Let go of what a failed request left (its tensors, held by reference cycles of its
    exception's frames) and hand the cached blocks back to the GPU."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
