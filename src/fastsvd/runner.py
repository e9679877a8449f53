"""What a worker runs for a job: the model, or a stand-in named by ``FASTSVD_RUNNER``.

A runner turns one validated fal input into MP4 bytes, calling the hooks on the way. It says
which capabilities it has (``fastsvd.endpoints``: an endpoint names the one it needs), and a
worker claims only the endpoints those cover. The model runner loads the pipeline once (``load``),
resolves ``image_url`` into a picture and maps the fal input onto the pipeline's own
``GenerationParams`` (``params_of``); the import of torch happens here, in the worker process only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol

from PIL import Image
from pydantic import BaseModel

from fastsvd import media
from fastsvd.endpoints import (
    FEW_STEP,
    FEW_STEP_TEXT_TO_VIDEO,
    IMAGE_TO_VIDEO,
    TEXT_TO_VIDEO,
    configured,
)
from fastsvd.errors import FastSVDError, InvalidInput
from fastsvd.pipeline.hooks import Hooks
from fastsvd.pipeline.params import GenerationParams
from fastsvd.schema import (
    FewStepRequest,
    ImageRequest,
    PromptRequest,
    TextToVideoInput,
    VideoRequest,
    closest_preset,
)
from fastsvd.settings import Settings

ImageLoader = Callable[[str], Image.Image]


class Runner(Protocol):
    """Turns a request into an MP4."""

    capabilities: frozenset[str]  # what it can run (fastsvd.endpoints)

    def load(self) -> None:
        """Get ready (load models); called once before the first job."""

    def run(self, capability: str, request: BaseModel, seed: int, hooks: Hooks) -> bytes:
        """The MP4 for ``request``, an input of an endpoint that needs ``capability``."""


class ModelRunner:
    """The real pipeline: the models of the capabilities it is given, and no others."""

    def __init__(
        self,
        settings: Settings,
        load_image: ImageLoader,
        capabilities: frozenset[str] | None = None,
        *,
        warm_up: bool = True,
    ) -> None:
        self.settings = settings
        self.load_image = load_image
        # default: what the configured endpoints need (FASTSVD_ENDPOINTS)
        self.capabilities = (
            configured(settings).capabilities() if capabilities is None else capabilities
        )
        self.warm_up = warm_up  # compile in load (a worker), or on the first request (generate)
        self._pipeline: object | None = None

    def load(self) -> None:
        from fastsvd.pipeline.quiet import quiet_libraries

        quiet_libraries()
        from fastsvd.pipeline import compile, optimize, weights
        from fastsvd.pipeline.core import Models, load_pipeline
        from fastsvd.pipeline.device import choose
        from fastsvd.pipeline.presets import PRESETS

        s = self.settings
        placement = choose(s.device, s.dtype)
        options = compile.parse(s.compile, placement.device)
        if options is not None:  # compiled kernels survive restarts in the data folder
            compile.use_cache_dir(s.data_dir / "compile-cache")
        have = self.capabilities
        report = weights.check(s, have)
        if not report.complete and weights.hub_offline():  # every missing model, at once
            raise report.error()
        # compiled and warmed up here, so a worker reports ready only after warm-up
        self._pipeline = load_pipeline(
            PRESETS[s.preset],
            placement,
            models=Models(
                video=bool(have & {TEXT_TO_VIDEO, IMAGE_TO_VIDEO}),
                first_frame=TEXT_TO_VIDEO in have,
                few_step_video=bool(have & FEW_STEP),
                few_step_first_frame=FEW_STEP_TEXT_TO_VIDEO in have,
            ),
            video_model=s.video_model,
            first_frame_model=s.first_frame_model,
            few_step_video_model=s.few_step_video_model,
            few_step_first_frame_model=s.few_step_first_frame_model,
            few_step_guidance=s.few_step_guidance,
            fps_conditioning=s.fps_conditioning,
            optimizations=optimize.parse(s.optimize),
            compile=options,
            warm_up=self.warm_up and options is not None,
        )

    def run(self, capability: str, request: BaseModel, seed: int, hooks: Hooks) -> bytes:
        from fastsvd.pipeline.core import VideoPipeline

        pipeline = self._pipeline
        if not isinstance(pipeline, VideoPipeline):
            raise RuntimeError("ModelRunner.run before load")
        # the request's type says what to run (params_of); the capability, that it is loaded
        if capability not in self.capabilities or not isinstance(request, VideoRequest):
            raise FastSVDError(f"no {capability} for a {type(request).__name__}")
        image = self.load_image(request.image_url) if isinstance(request, ImageRequest) else None
        video = pipeline.generate(params_of(request, seed, image), hooks)
        return pipeline.to_mp4(video, hooks)


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
        deep_cache="none" if isinstance(request, FewStepRequest) else str(request.deep_cache),
        few_step=isinstance(request, FewStepRequest),
        prompt=prompt,
        negative_prompt=negative_prompt,
        image=image if prompt is None else None,
    )


def make_runner(settings: Settings, load_image: ImageLoader) -> Runner:
    """The runner ``settings`` ask for: ``FASTSVD_RUNNER`` (``module:factory``) or the model."""
    if settings.runner:
        module_name, _, attribute = settings.runner.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute or "Runner")
        runner: Runner = factory(settings, load_image)
        return runner
    return ModelRunner(settings, load_image)


def data_uri_only(url: str) -> Image.Image:
    """An image loader for ``data:`` URIs alone."""
    if not url.startswith("data:"):
        raise InvalidInput("image_url", "only data: URIs can be read here")
    return media.decode_data_uri_image(url)
