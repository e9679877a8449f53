"""A stand-in for the model, for service tests where the pictures do not matter.

It behaves like the pipeline at its seams: one hook call per step, a cancel check before each
step, a real MP4 at the end. ``Runner`` succeeds; each behaviour a test needs is a runner of its
own, which the test's server or worker names in ``FASTSVD_RUNNER``:

- ``Failing``: raises ``GenerationFailed`` at the first video step;
- ``Crashing``: kills the worker process at the first video step of its first ``FAKE_CRASHES``
  runs (a poison job), counted in the data folder across the worker's restarts; later runs
  succeed, so a test sees the restarted worker serve the next job;
- ``GpuFaulting``: raises ``GpuFault`` at the first video step, as the pipeline does on a CUDA
  error that leaves the context unusable.

The prompt still picks these behaviours:

- "slow": 0.5 s a step instead of ``FAKE_STEP_S`` (default 0.02 s).

``FAKE_LOAD_S`` makes ``load`` take that long, as loading real weights does.

Text-to-video draws a plain first frame in ``FIRST_FRAME_STEPS`` steps and hands it to
``on_first_frame``, as the pipeline does. Image-to-video reads ``image_url`` through the worker's
loader and fills the frames with the picture's average colour, so tests can see which picture
arrived.
"""

from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image, ImageStat
from pydantic import BaseModel

from fastsvd.endpoints import ENDPOINTS
from fastsvd.errors import GenerationFailed, GpuFault
from fastsvd.hooks import Hooks, Stage, StepEvent
from fastsvd.pipeline.encode import encode_mp4
from fastsvd.runner import ImageLoader
from fastsvd.schema import PromptRequest, VideoRequest
from fastsvd.settings import Settings

FIRST_FRAME_STEPS = 4


class Runner:
    capabilities = ENDPOINTS.capabilities()  # all four; FASTSVD_ENDPOINTS narrows the worker

    def __init__(self, settings: Settings, load_image: ImageLoader) -> None:
        self.load_image = load_image
        self.step_s = float(os.environ.get("FAKE_STEP_S", "0.02"))

    def load(self) -> None:
        time.sleep(float(os.environ.get("FAKE_LOAD_S", "0")))  # models take a while to load

    def idle(self) -> bool:
        return False  # nothing to compile between jobs

    def run(self, capability: str, request: BaseModel, seed: int, hooks: Hooks) -> bytes:
        assert isinstance(request, VideoRequest)
        assert type(request) is next(e.input for e in ENDPOINTS if e.capability == capability)
        colour = (seed % 256, 100, 200)
        step_s = self.step_s
        if isinstance(request, PromptRequest):
            if "slow" in request.prompt:
                step_s = 0.5
            for step in range(1, FIRST_FRAME_STEPS + 1):
                hooks.check_cancel(Stage.first_frame, step)
                time.sleep(self.step_s)
                hooks.on_step(StepEvent(Stage.first_frame, step, FIRST_FRAME_STEPS))
            hooks.on_first_frame(Image.new("RGB", (64, 64), colour))
        else:
            picture = self.load_image(request.image_url).convert("RGB")
            colour = tuple(int(v) for v in ImageStat.Stat(picture).mean)  # type: ignore[assignment]
        for step in range(1, request.steps + 1):
            hooks.check_cancel(Stage.video, step)
            self.video_step()
            time.sleep(step_s)
            hooks.on_step(StepEvent(Stage.video, step, request.steps))
        frames = np.full((25, 64, 64, 3), colour, dtype=np.uint8)
        return encode_mp4(frames, request.fps)

    def video_step(self) -> None:
        """What happens at each video step before its wait: nothing, for a model that works."""


class Failing(Runner):
    def video_step(self) -> None:
        raise GenerationFailed("the fake model failed on purpose")


class Crashing(Runner):
    def __init__(self, settings: Settings, load_image: ImageLoader) -> None:
        super().__init__(settings, load_image)
        self.crashes = int(os.environ["FAKE_CRASHES"])
        self.crashed = settings.data_dir / "fake-crashes"  # one byte a crash

    def video_step(self) -> None:
        if (self.crashed.stat().st_size if self.crashed.exists() else 0) < self.crashes:
            with self.crashed.open("ab") as crashed:
                crashed.write(b"x")
            os._exit(9)


class GpuFaulting(Runner):
    def video_step(self) -> None:
        raise GpuFault("the GPU failed: CUDA error: an illegal memory access was encountered")
