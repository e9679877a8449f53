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
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    StableVideoDiffusionPipeline,
    UNet2DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from PIL import Image

from fastsvd import constants as c
from fastsvd import media
from fastsvd.errors import FastSVDError, GenerationFailed, GpuFault, OutOfMemory
from fastsvd.pipeline import deepcache, optimize, tiny, weights
from fastsvd.pipeline import model_configs as configs
from fastsvd.pipeline.chain import chain
from fastsvd.pipeline.compile import (
    CompileOptions,
    GraphState,
    compile_regions,
    configure,
    set_state,
)
from fastsvd.pipeline.consistency import ConsistencySampler
from fastsvd.pipeline.device import Placement, is_gpu_fault
from fastsvd.pipeline.encode import encode_mp4
from fastsvd.pipeline.first_frame import draw_first_frame
from fastsvd.pipeline.hooks import NO_HOOKS, Hooks, Stage, StageClock, StepEvent
from fastsvd.pipeline.loading import Placements, load_pretrained, load_single_file, placement_of
from fastsvd.pipeline.memory import ALL_MODELS, Models, Plan, cpu_plan
from fastsvd.pipeline.params import GenerationParams
from fastsvd.pipeline.presets import ANIMATE_LCM, SDXL_LIGHTNING_4STEP, ModelPreset
from fastsvd.pipeline.video import VideoSettings, animate

# FASTSVD_FPS_CONDITIONING: the video model is conditioned on the preset's fps id (what it was
# fine-tuned at), or on the request's fps - 1 (what diffusers' pipeline does)
FPS_FROM_PRESET = "preset"
FPS_FROM_REQUEST = "request"

# the distilled U-Net of a stage's few-step family, in a stage's ``parts``
FEW_STEP_UNET = "few_step_unet"

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


@dataclass(frozen=True)
class _Family:
    """What one family runs a request with: its models (None: not loaded) and settings."""

    name: str  # for messages: "20-step " or "few-step "
    video: StableVideoDiffusionPipeline | None
    graphs: deepcache.UNetGraphs | None  # the DeepCache forwards; None: the family has none
    first_frame: StableDiffusionXLPipeline | None
    first_frame_steps: int
    first_frame_guidance: float
    min_guidance: float  # the video's per-frame guidance ramp
    max_guidance: float


class VideoPipeline:
    """The loaded models of one preset, ready to generate one request at a time.

    Two families: the 20-step one (``video``, ``first_frame``) and the few-step one
    (``few_step_video``, ``few_step_first_frame``), each loaded or not. A family's distilled
    U-Net runs on the other's components where both are loaded: one VAE, image encoder, text
    encoder pair, in memory once.
    """

    def __init__(
        self,
        preset: ModelPreset,
        placement: Placement,
        video: StableVideoDiffusionPipeline | None,
        first_frame: StableDiffusionXLPipeline | None,
        *,
        few_step_video: StableVideoDiffusionPipeline | None = None,
        few_step_first_frame: StableDiffusionXLPipeline | None = None,
        few_step_guidance: float | None = None,
        plan: Plan | None = None,
    ) -> None:
        if video is None and few_step_video is None:
            raise ValueError("a VideoPipeline needs a video model")
        self.preset = preset
        self.placement = placement
        self._video = video
        self.first_frame = first_frame
        self.few_step_video = few_step_video
        self.few_step_first_frame = few_step_first_frame
        # the few-step video's guidance ramp ends here (1.0: no guidance, one U-Net batch)
        self.few_step_guidance = (
            preset.few_step.max_guidance_scale if few_step_guidance is None else few_step_guidance
        )
        # where each model waits between stages (pipeline/memory.py); no GPU: where it is
        self.plan = plan or cpu_plan({}, preset.decode_chunk_size)
        for pipe in self.pipes():
            pipe.set_progress_bar_config(disable=True)
        self._place()
        # the video U-Net's forwards, eager until ``compile``; one full graph keeps every cut
        self.graphs = (
            deepcache.UNetGraphs(video.unet, deepcache.BRANCHES) if video is not None else None
        )
        self.compiled: CompileOptions | None = None
        # where the video's fps conditioning comes from: FPS_FROM_PRESET or FPS_FROM_REQUEST
        self.fps_conditioning = FPS_FROM_PRESET

    @property
    def video(self) -> StableVideoDiffusionPipeline:
        """The 20-step video model (SVD-XT)."""
        if self._video is None:
            raise FastSVDError(f"preset {self.preset.name} was loaded without the 20-step model")
        return self._video

    def pipes(self) -> list[StableVideoDiffusionPipeline | StableDiffusionXLPipeline]:
        """The loaded diffusers pipelines (they may share components)."""
        pipes = (self._video, self.first_frame, self.few_step_video, self.few_step_first_frame)
        return [pipe for pipe in pipes if pipe is not None]

    def compile(self, options: CompileOptions) -> None:
        """Compile the models as ``options`` say (``pipeline/compile.py``); lazily: the graphs
        are built on the first call, which ``warm_up`` makes."""
        configure()
        options = replace(options, guards=[])  # this pipeline's own graphs
        firsts = (self.first_frame, self.few_step_first_frame) if options.first_frame else ()
        # whole forwards: the first frames' U-Nets, the few-step video's (no DeepCache)
        whole = [p.unet for p in (*firsts, self.few_step_video) if p is not None]
        if options.regional:
            teacher = [self._video.unet] if self._video is not None else []
            for unet in [*whole, *teacher]:
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
        if self._video is not None:
            if self.first_frame is not None:
                steps.append(warming(params, keep_frame=True))
            else:
                steps.append(warming(replace(params, prompt=None, image=grey)))
            # minimum's schedule covers cut 1 (medium's too), high's cut 0: full, then shallow
            for level in ("minimum", "high"):
                steps.append(warming(replace(params, prompt=None, image=grey, deep_cache=level)))
        if self.few_step_video is not None:
            few = replace(params, few_step=True, negative_prompt="")
            if self.few_step_first_frame is None:
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
        if params.deep_cache not in deepcache.LEVELS:
            raise ValueError(f"no deep_cache level {params.deep_cache!r}")
        family = self._family(params.few_step)
        video = family.video
        if video is None:
            raise FastSVDError(
                f"preset {self.preset.name} was loaded without the {family.name}video model"
            )
        if family.graphs is None and params.deep_cache != "none":
            raise ValueError("the few-step video model runs without DeepCache")
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
            min_guidance_scale=family.min_guidance,
            max_guidance_scale=family.max_guidance,
            decode_chunk_size=self.plan.decode_chunk,
            cache=deepcache.LEVELS[params.deep_cache],
        )

        def segment(conditioning: Image.Image, seed: int, segment_hooks: Hooks) -> np.ndarray:
            # offloaded models go to the GPU for one segment at a time: between segments the
            # caller encodes, and a cancelled or failed stream leaves nothing on the GPU
            with _translated_errors(), torch.inference_mode(), self._on_device(video):
                frames = animate(
                    video, conditioning, replace(settings, seed=seed), segment_hooks, family.graphs
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

    def _family(self, few_step: bool) -> _Family:
        """One family's loaded models and settings (the few-step guidance as set now)."""
        if few_step:
            few = self.preset.few_step
            return _Family(
                "few-step ",
                self.few_step_video,
                None,
                self.few_step_first_frame,
                few.first_frame_steps,
                few.first_frame_guidance,
                few.min_guidance_scale,
                self.few_step_guidance,
            )
        p = self.preset
        return _Family(
            "20-step ",
            self._video,
            self.graphs,
            self.first_frame,
            p.first_frame_steps,
            p.first_frame_guidance,
            p.min_guidance_scale,
            p.max_guidance_scale,
        )

    def _draw_first_frame(
        self, family: _Family, prompt: str, params: GenerationParams, hooks: Hooks
    ) -> Image.Image:
        """Stage 1: ``prompt`` rendered at the video's size, by the family's first-frame model."""
        pipe = family.first_frame
        if pipe is None:
            raise FastSVDError(
                f"preset {self.preset.name} was loaded without the {family.name}first-frame model"
            )
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
        """The loaded models by id: each one's part name (``memory.py``, from its stage's
        ``parts``) and module; a component two pipelines share is named after the base one."""
        parts: dict[int, tuple[str, torch.nn.Module]] = {}
        stages = (
            (VIDEO_STAGE, self._video, self.few_step_video),
            (FIRST_FRAME_STAGE, self.first_frame, self.few_step_first_frame),
        )
        for stage, base, few in stages:
            for pipe, unet in ((base, "unet"), (few, FEW_STEP_UNET)):
                if pipe is None:
                    continue
                for component, part in stage.parts.items():
                    if component == FEW_STEP_UNET:
                        continue
                    module = pipe.components.get(component)
                    if isinstance(module, torch.nn.Module):
                        name = stage.parts[unet] if component == "unet" else part
                        parts.setdefault(id(module), (name, module))
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


def load_pipeline(
    preset: ModelPreset,
    placement: Placement,
    *,
    models: Models = ALL_MODELS,
    video_model: str | None = None,
    first_frame_model: str | None = None,
    few_step_video_model: str | None = None,
    few_step_first_frame_model: str | None = None,
    few_step_guidance: float | None = None,
    fps_conditioning: str = FPS_FROM_PRESET,
    optimizations: tuple[str, ...] = (),
    compile: CompileOptions | None = None,
    warm_up: bool = False,
    plan: Plan | None = None,
) -> VideoPipeline:
    """Load ``models`` of ``preset`` onto ``placement``; ``*_model`` override where their weights
    are (a Hugging Face id or folder; for the few-step U-Nets, a single file or its repo).

    ``plan`` (``pipeline/memory.py``) says which models wait on the CPU between stages, and
    the decode chunk; by default everything stays on ``placement``'s device. With ``compile``
    the models are compiled (eager until warmed up and swapped in: ``compile.py``), and with
    ``warm_up`` one short request per ``deep_cache`` level runs at the default size first.
    """
    few = preset.few_step
    released = weights.manifest(preset)
    video, few_video = _load_stage(
        VIDEO_STAGE,
        video_model or preset.video_model,
        _placements(plan, placement, VIDEO_STAGE),
        released,
        base=models.video,
        few_step=models.few_step_video,
        reference=few_step_video_model or few.video_unet,
        default_file=_file_name(few.video_unet or ANIMATE_LCM),
    )
    first_frame, few_first = _load_stage(
        FIRST_FRAME_STAGE,
        first_frame_model or preset.first_frame_model,
        _placements(plan, placement, FIRST_FRAME_STAGE),
        released,
        base=models.first_frame,
        few_step=models.few_step_first_frame,
        reference=few_step_first_frame_model or few.first_frame_unet,
        default_file=_file_name(few.first_frame_unet or SDXL_LIGHTNING_4STEP),
    )
    few_step_video = few_step_first_frame = None
    if few_video is not None:
        parts, unet = few_video
        few_step_video = StableVideoDiffusionPipeline(
            **{**parts.components, "unet": unet, "scheduler": ConsistencySampler()}
        )
    if few_first is not None:
        parts, unet = few_first
        few_step_first_frame = lightning_pipeline(parts, unet)
    pipeline = VideoPipeline(
        preset,
        placement,
        video,
        first_frame,
        few_step_video=few_step_video,
        few_step_first_frame=few_step_first_frame,
        few_step_guidance=few_step_guidance,
        plan=plan,
    )
    pipeline.fps_conditioning = fps_conditioning
    optimize.apply(pipeline.pipes(), optimizations)
    if compile is not None:
        pipeline.compile(compile)
    if warm_up:
        pipeline.warm_up()
    return pipeline


@dataclass(frozen=True)
class _Stage:
    """How one stage's models load: its pipeline and U-Net classes, its messages' names, and
    its tiny equivalents."""

    pipeline: type[StableVideoDiffusionPipeline] | type[StableDiffusionXLPipeline]
    unet: type[UNetSpatioTemporalConditionModel] | type[UNet2DConditionModel]
    key: str  # the model's key in the weights manifest (its few-step U-Net's: "few_step_" + key)
    parts: dict[str, str]  # component -> its part in the memory plan (``memory.py``)
    role: str
    env_var: str
    few_step_role: str
    few_step_env_var: str
    bundled_config: str  # the released model's config kept in pipeline/configs
    build_tiny: Callable[[], Any]
    tiny_unet_config: Callable[[], dict[str, Any]]
    build_tiny_few_step_unet: Callable[[], torch.nn.Module]


VIDEO_STAGE = _Stage(
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
    weights.VIDEO,
    {
        "unet": "video_unet",
        FEW_STEP_UNET: "few_step_video_unet",
        "image_encoder": "image_encoder",
        "vae": "video_vae",
    },
    "video (SVD-XT)",
    "FASTSVD_VIDEO_MODEL",
    "few-step video (AnimateLCM-SVD-xt)",
    "FASTSVD_FEW_STEP_VIDEO_MODEL",
    configs.SVD_XT,
    tiny.build_video,
    tiny.video_unet_config,
    tiny.build_few_step_video_unet,
)
FIRST_FRAME_STAGE = _Stage(
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    weights.FIRST_FRAME,
    {
        "unet": "first_frame_unet",
        FEW_STEP_UNET: "few_step_first_frame_unet",
        "text_encoder": "text_encoders",
        "text_encoder_2": "text_encoders",
        "vae": "first_frame_vae",
    },
    "first-frame (SDXL)",
    "FASTSVD_FIRST_FRAME_MODEL",
    "few-step first-frame (SDXL-Lightning)",
    "FASTSVD_FEW_STEP_FIRST_FRAME_MODEL",
    configs.SDXL_BASE,
    tiny.build_first_frame,
    tiny.first_frame_unet_config,
    tiny.build_few_step_first_frame_unet,
)


def _placements(plan: Plan | None, placement: Placement, stage: _Stage) -> Placements:
    """Where each of ``stage``'s components loads: straight to the CPU when ``plan`` keeps its
    part there between stages, else to ``placement``; so no model passes through the GPU (or
    through host memory whole) on its way to where it waits."""
    offloaded = plan.offloaded if plan is not None else frozenset()
    cpu = Placement(torch.device("cpu"), placement.dtype)
    return {"": placement} | {
        component: cpu for component, part in stage.parts.items() if part in offloaded
    }


def _load_stage(
    stage: _Stage,
    model: str | None,
    placements: Placements,
    released: dict[str, weights.ModelWeights],
    *,
    base: bool,
    few_step: bool,
    reference: str | None,
    default_file: str,
) -> tuple[Any, tuple[Any, torch.nn.Module] | None]:
    """One stage's models: with ``base``, its pipeline from ``model`` (None: tiny); with
    ``few_step``, the distilled U-Net from ``reference`` (None: tiny) and the pipeline whose
    other components it runs on (the base one when loaded, else one loaded without its own
    U-Net)."""

    def pretrained(**components: Any) -> Any:
        assert model is not None
        return load_pretrained(
            stage.pipeline,
            model,
            placements,
            role=stage.role,
            env_var=stage.env_var,
            weights=released.get(stage.key),
            components=components,
        )

    pipe = (pretrained() if model else stage.build_tiny()) if base else None
    if not few_step:
        return pipe, None
    if reference is None:
        unet = stage.build_tiny_few_step_unet()
    else:
        config = (
            _unet_config(stage.unet, pipe, model, stage.bundled_config)
            if model
            else stage.tiny_unet_config()
        )
        unet = load_single_file(
            stage.unet,
            config,
            reference,
            placement_of(placements, FEW_STEP_UNET),
            default_file=default_file,
            role=stage.few_step_role,
            env_var=stage.few_step_env_var,
            weights=released.get(f"few_step_{stage.key}"),
        )
    if pipe is not None:
        return pipe, (pipe, unet)
    # the other components, without the teacher's U-Net
    return None, (pretrained(unet=unet) if model else stage.build_tiny(), unet)


def lightning_pipeline(
    base: StableDiffusionXLPipeline, unet: UNet2DConditionModel
) -> StableDiffusionXLPipeline:
    """SDXL-Lightning: ``base``'s text encoders, tokenizers and VAE with the distilled ``unet``,
    sampled by Euler with trailing timestep spacing (the Lightning authors' setting)."""
    scheduler = EulerDiscreteScheduler.from_config(
        base.scheduler.config, timestep_spacing="trailing"
    )
    return StableDiffusionXLPipeline(
        **{**base.components, "unet": unet, "scheduler": scheduler},
        force_zeros_for_empty_prompt=base.config.force_zeros_for_empty_prompt,
        add_watermarker=False,  # a first frame is an input of the video model, not an output
    )


def _unet_config(
    cls: type[UNetSpatioTemporalConditionModel] | type[UNet2DConditionModel],
    loaded: StableVideoDiffusionPipeline | StableDiffusionXLPipeline | None,
    model: str,
    bundled: str,
) -> dict[str, Any]:
    """The architecture a distilled U-Net file is loaded into: that of the U-Net of ``model``
    (the loaded one's, else its config file), else the released model's config kept here."""
    if loaded is not None:
        return dict(loaded.unet.config)
    try:
        config: dict[str, Any] = cls.load_config(model, subfolder="unet")
        return config
    except (OSError, ValueError):  # loading the components next says what is missing
        return configs.load(bundled, "unet")


def _file_name(reference: str) -> str:
    return reference.rsplit("/", 1)[-1]
