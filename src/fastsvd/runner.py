"""What a worker runs for a job: the model, or a stand-in named by ``FASTSVD_RUNNER``.

A runner turns one validated fal input into MP4 bytes, calling the hooks on the way. It says
which capabilities it has (an endpoint names the one it needs: for the model, a
``presets.Capability``, a family's models as data), and a worker claims only the endpoints those
cover. The runner knows no endpoint: the model runner is given the ones it may serve, by id.
It loads the pipeline once (``load``), resolves ``image_url`` into a picture and maps the fal
input onto the pipeline's own ``GenerationParams`` (``params_of``); the import of torch happens
here, in the worker process only.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from PIL import Image
from pydantic import BaseModel

from fastsvd import media
from fastsvd.errors import DoesNotFit, FastSVDError, InvalidInput, OutOfMemory
from fastsvd.hooks import Hooks
from fastsvd.pipeline.params import GenerationParams
from fastsvd.pipeline.presets import FEW_STEP, STANDARD, Capability, models_of
from fastsvd.schema import (
    DeepCache,
    FewStepRequest,
    ImageRequest,
    PromptRequest,
    TextToVideoInput,
    VideoRequest,
    closest_preset,
)
from fastsvd.settings import Settings

if TYPE_CHECKING:
    from fastsvd.pipeline.device import Placement, Platform
    from fastsvd.pipeline.memory import Models, Plan

log = logging.getLogger("fastsvd.runner")

ImageLoader = Callable[[str], Image.Image]


class Runner(Protocol):
    """Turns a request into an MP4."""

    capabilities: frozenset[Hashable]  # what it can run (an endpoint names what it needs)

    def load(self) -> None:
        """Get ready (load models); called once before the first job."""

    def run(self, capability: Hashable, request: BaseModel, seed: int, hooks: Hooks) -> bytes:
        """The MP4 for ``request``, an input of an endpoint that needs ``capability``."""

    def idle(self) -> bool:
        """Use a pause between jobs (a piece of compilation); True while more remains."""


class ModelRunner:
    """The real pipeline: the models of the endpoints it is given, and no others.

    ``endpoints`` (id -> the ``Capability`` it needs) are those it may serve. At construction it
    checks the platform and chooses the memory plan (``pipeline/memory.py``), which may leave
    out endpoints that do not fit, unless they were named (``explicit``; default: when
    ``FASTSVD_ENDPOINTS`` names them): ``capabilities`` are those it serves. ``platform`` is the
    seam for tests (default: ``device.probe()``), as is ``warm_up_size`` (width, height; default:
    fal's default ``video_size``, the size a worker compiles).
    """

    def __init__(
        self,
        settings: Settings,
        load_image: ImageLoader,
        endpoints: Mapping[str, Hashable],
        *,
        explicit: bool | None = None,
        serving: bool = True,
        platform: Platform | None = None,
        warm_up_size: tuple[int, int] | None = None,
    ) -> None:
        from fastsvd.pipeline.quiet import quiet_libraries

        quiet_libraries()
        from fastsvd.pipeline.device import choose, probe
        from fastsvd.pipeline.presets import PRESETS

        self.settings = settings
        self.load_image = load_image
        # a worker compiles between jobs; `fastsvd generate` only when asked, on its request
        self.serving = serving
        if settings.preset not in PRESETS:
            raise InvalidInput("preset", f"unknown preset; use one of {', '.join(PRESETS)}")
        self.preset = PRESETS[settings.preset]
        real = self.preset.real
        if settings.device is None or settings.device.strip().lower() != "cpu":
            platform = platform or probe()
        self.platform = platform
        self.placement = choose(settings.device, settings.dtype, real=real, platform=platform)
        wanted = {i: need for i, need in endpoints.items() if isinstance(need, Capability)}
        explicit = bool(settings.endpoints) if explicit is None else explicit
        self.plan = self._plan({i: need.models for i, need in wanted.items()}, explicit=explicit)
        self.capabilities: frozenset[Hashable] = frozenset(
            wanted[i] for i in self.plan.endpoints
        ) or frozenset(wanted.values())
        self.warm_up_size = warm_up_size
        self._pipeline: object | None = None
        self._warm_up: list[Callable[[], None]] = []  # the compile steps left, between jobs

    def _plan(self, endpoints: dict[str, Models], *, explicit: bool) -> Plan:
        total = self.platform.total_bytes if self.platform is not None else None
        return memory_plan(self.settings, self.placement, total, endpoints, explicit=explicit)

    def describe(self) -> str:
        """The start line: the platform, the dtype chosen, torch and CUDA, the memory plan."""
        where = self.platform.describe() if self.platform is not None else "CPU (FASTSVD_DEVICE)"
        return f"device {self.placement} on {where}; memory plan: {self.plan.describe()}"

    def load(self) -> None:
        import torch

        from fastsvd.pipeline import compile, optimize, weights
        from fastsvd.pipeline.core import WARM_UP_SIZE
        from fastsvd.pipeline.loading import load_pipeline

        settings = self.settings
        log.info(self.describe())
        options = compile.parse(settings.compile, self.placement.device, serving=self.serving)
        if options is not None:  # compiled kernels survive restarts in the data folder
            compile.use_cache_dir(settings.data_dir / "compile-cache")
        report = weights.check(settings, self.capabilities)
        if not report.complete and weights.hub_offline():  # every missing model, at once
            raise report.error()
        try:
            pipeline = load_pipeline(
                self.preset,
                self.placement,
                models=models_of(self.capabilities),
                settings=settings,
                optimizations=optimize.parse(settings.optimize),
                compile=options,
                plan=self.plan,
            )
            self._pipeline = pipeline
            if options is None:
                return
            if not self.serving:
                pipeline.compile_on_first_use()
                return
            size = self.warm_up_size or WARM_UP_SIZE
            if self._warmed_marker().exists():  # the persisted cache: ready compiled
                pipeline.warm_up(size)
            else:  # serve eagerly now; compile between jobs (``idle``)
                self._warm_up = pipeline.warm_up_steps(size)
        except OutOfMemory as exc:
            raise self._does_not_fit("warming up", exc) from exc
        except torch.OutOfMemoryError as exc:  # while loading
            raise self._does_not_fit("loading the models", exc) from exc

    def idle(self) -> bool:
        """One warm-up step (compiling one set of graphs); the swap after the last one."""
        if not self._warm_up:
            return False
        from fastsvd.pipeline.core import VideoPipeline

        pipeline = self._pipeline
        assert isinstance(pipeline, VideoPipeline)
        try:
            self._warm_up.pop(0)()
        except OutOfMemory as exc:
            raise self._does_not_fit("warming up", exc) from exc
        if not self._warm_up:
            pipeline.swap_in()
            marker = self._warmed_marker()
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(self.describe() + "\n", encoding="utf-8")
            log.info("compiled graphs swapped in")
        return bool(self._warm_up)

    def _warmed_marker(self) -> Path:
        """The file that says the persisted cache holds a warm-up of these very models."""
        import hashlib

        # the platform line names torch's version, the GPU and dtype; the plan, the models
        # and the warm-up's size, the shapes the graphs were compiled for
        capabilities = sorted(str(c) for c in self.capabilities)
        key = repr((self.describe(), self.settings.compile, capabilities, self.warm_up_size))
        name = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.settings.data_dir / "compile-cache" / f"warmed-{name}"

    def _does_not_fit(self, doing: str, exc: BaseException) -> FastSVDError:
        from fastsvd.pipeline.memory import MODES

        modes = list(MODES)
        leaner = modes[modes.index(self.plan.mode) + 1 :]
        advice = f"FASTSVD_MEMORY_MODE={leaner[0]}, " if leaner else ""
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return DoesNotFit(
            f"out of GPU memory while {doing} ({first}) with memory plan {self.plan.describe()}; "
            f"try {advice}fewer endpoints (FASTSVD_ENDPOINTS), or FASTSVD_GPU_MEMORY_GB below "
            f"{(self.plan.total_bytes or 0) / 1024**3:.0f} to plan for less"
        )

    def run(self, capability: Hashable, request: BaseModel, seed: int, hooks: Hooks) -> bytes:
        from fastsvd.pipeline.core import VideoPipeline, free_memory

        pipeline = self._pipeline
        if not isinstance(pipeline, VideoPipeline):
            raise RuntimeError("ModelRunner.run before load")
        # the request's type says what to run (params_of); the capability, that it is loaded
        if capability not in self.capabilities or not isinstance(request, VideoRequest):
            raise FastSVDError(f"no {capability} for a {type(request).__name__}")
        image = self.load_image(request.image_url) if isinstance(request, ImageRequest) else None
        try:
            # the frames are encoded as each segment is made: a long video is never whole
            return pipeline.to_mp4(pipeline.stream(params_of(request, seed, image), hooks), hooks)
        except OutOfMemory as exc:
            message = exc.message
        # out of memory: this request fails alone, once its tensors are gone (the exception
        # that held them has ended) and the cache is handed back; the next one starts clean
        free_memory()
        raise OutOfMemory(message)


def memory_plan(
    settings: Settings,
    placement: Placement,
    total_bytes: int | None,
    endpoints: dict[str, Models],
    *,
    explicit: bool,
) -> Plan:
    """The memory plan for ``endpoints`` (id -> models) on a GPU of ``total_bytes`` (or as much
    as ``FASTSVD_GPU_MEMORY_GB`` says), in ``FASTSVD_MEMORY_MODE``; no GPU: the CPU plan."""
    from fastsvd.pipeline import memory
    from fastsvd.pipeline.presets import PRESETS

    preset = PRESETS[settings.preset]
    if settings.gpu_memory_gb is not None and placement.device.type == "cuda":
        total_bytes = int(settings.gpu_memory_gb * memory.GiB)
    if placement.device.type != "cuda" or total_bytes is None:
        return memory.cpu_plan(endpoints, preset.decode_chunk_size)
    import torch

    real = preset.real
    mode = settings.memory_mode
    return memory.choose(
        total_bytes,
        endpoints,
        dtype_bytes=placement.dtype.itemsize,
        preset_chunk=preset.decode_chunk_size,
        mode=None if mode is None or mode.lower() == "auto" else mode,
        explicit=explicit,
        weights=None if real else dict.fromkeys(memory.PARTS, 0),  # tiny: a few MB, nothing
        fp16=placement.dtype == torch.float16,  # its VAEs decode in fp32
    )


def params_of(
    request: VideoRequest, seed: int, image: Image.Image | None = None
) -> GenerationParams:
    """The pipeline's parameters for a fal input: a text-to-video prompt, or ``image`` (the
    picture at ``image_url``) sized as ``video_size`` says, else as the closest preset."""
    if isinstance(request, PromptRequest):
        size = request.video_size
        prompt: str | None = request.prompt
        negative_prompt = request.negative_prompt if isinstance(request, TextToVideoInput) else ""
    elif image is None:
        raise FastSVDError("image-to-video needs the picture at image_url")
    else:
        size = request.video_size or closest_preset(*image.size)
        prompt, negative_prompt = None, ""
    return GenerationParams(
        width=size.width,
        height=size.height,
        steps=request.steps,
        fps=request.fps,
        motion_bucket_id=request.motion_bucket_id,
        noise_aug_strength=request.cond_aug,
        seed=seed,
        # the few-step family has no DeepCache (nor a negative prompt)
        deep_cache=DeepCache.none if isinstance(request, FewStepRequest) else request.deep_cache,
        family=FEW_STEP if isinstance(request, FewStepRequest) else STANDARD,
        prompt=prompt,
        negative_prompt=negative_prompt,
        image=image if prompt is None else None,
        num_frames=request.num_frames,
        color_match=request.color_match,
    )


def make_runner(
    settings: Settings, load_image: ImageLoader, endpoints: Mapping[str, Hashable]
) -> Runner:
    """The runner ``settings`` ask for: ``FASTSVD_RUNNER`` (``module:factory``, called with the
    settings and the image loader) or the model, for ``endpoints`` (id -> capability)."""
    if settings.runner:
        module_name, _, attribute = settings.runner.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute or "Runner")
        runner: Runner = factory(settings, load_image)
        return runner
    return ModelRunner(settings, load_image, endpoints)


def data_uri_only(url: str) -> Image.Image:
    """An image loader for ``data:`` URIs alone."""
    if not url.startswith("data:"):
        raise InvalidInput("image_url", "only data: URIs can be read here")
    return media.decode_data_uri_image(url)
