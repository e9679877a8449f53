"""How a caller watches and stops a generation: named stages, a step hook, a cancel hook."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from PIL import Image

from fastsvd.errors import GenerationCancelled


class Stage(enum.StrEnum):
    """The stages of a text-to-video request, in order (image-to-video skips the first)."""

    first_frame = "first_frame"  # text-to-image denoising steps
    video = "video"  # SVD-XT denoising steps
    decode = "decode"  # temporal VAE decode, one step per chunk of frames
    export = "export"  # H.264 encode into MP4, one step per frame


@dataclass(frozen=True)
class StepEvent:
    """Step ``step`` (1-based) of ``total`` in ``stage`` has finished; in a chained video, in
    segment ``segment`` (1-based) of ``segments``."""

    stage: Stage
    step: int
    total: int
    segment: int = 1
    segments: int = 1


@dataclass(frozen=True)
class Segment:
    """Segment ``index`` (1-based) of ``count`` of a chained video is about to be animated from
    ``image`` (the first frame, then the previous segment's last frame, colour-matched), with
    ``seed``."""

    index: int
    count: int
    seed: int
    image: Image.Image


def _never() -> bool:
    return False


def _ignore(_: object) -> None:
    return None


@dataclass(frozen=True)
class Hooks:
    """Callbacks a generation calls: after every step, before every step, with the first frame,
    and before every segment of the video (one for a video of the model's length).

    ``should_cancel`` is checked before every step of every stage, so a cancelled request stops
    within one step with ``GenerationCancelled``.
    """

    on_step: Callable[[StepEvent], None] = field(default=_ignore)
    should_cancel: Callable[[], bool] = field(default=_never)
    on_first_frame: Callable[[Image.Image], None] = field(default=_ignore)
    on_segment: Callable[[Segment], None] = field(default=_ignore)

    def check_cancel(self, stage: Stage, step: int) -> None:
        """Raise ``GenerationCancelled`` if the caller asked to stop."""
        if self.should_cancel():
            raise GenerationCancelled(f"cancelled before {stage} step {step}")


NO_HOOKS = Hooks()


class StageClock:
    """Seconds per stage, measured from the step events: the time from the previous mark to a
    step's event is that step's stage's. ``hooks`` are the caller's, with the clock inside.
    The one measure of stage timings: the pipeline's ``Video.timings_s`` and the worker's
    recorded stage timings both come from it."""

    def __init__(self, caller: Hooks) -> None:
        self.timings_s: dict[Stage, float] = {}
        self.hooks = replace(caller, on_step=self._on_step)
        self._caller = caller
        self._mark = time.perf_counter()

    def _on_step(self, event: StepEvent) -> None:
        self.lap(event.stage)
        self._caller.on_step(event)

    def lap(self, stage: Stage) -> None:
        """Count the time since the previous mark to ``stage``."""
        now = time.perf_counter()
        self.timings_s[stage] = self.timings_s.get(stage, 0.0) + now - self._mark
        self._mark = now

    def restart(self) -> None:
        """Count the time since the previous mark to no stage."""
        self._mark = time.perf_counter()
