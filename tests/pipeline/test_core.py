"""The pipeline end to end on the tiny preset: inputs reach the models, seeds, stock parity."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastsvd.errors import GenerationCancelled
from fastsvd.hooks import Hooks, Stage, StepEvent
from fastsvd.pipeline.core import (
    FPS_FROM_PRESET,
    FPS_FROM_REQUEST,
    WARM_UP_SIZE,
    VideoPipeline,
)
from fastsvd.pipeline.params import GenerationParams
from fastsvd.runner import params_of
from fastsvd.schema import ImageToVideoInput, TextToVideoInput

SIZE = {"width": 64, "height": 64}


def request(**fields: Any) -> TextToVideoInput:
    return TextToVideoInput.model_validate(
        {"prompt": "a rocket", "video_size": SIZE, "steps": 2, **fields}
    )


@contextmanager
def recorded_calls(module: nn.Module) -> Iterator[list[dict[str, Any]]]:
    """Every call of ``module`` as {"args", "kwargs"}."""
    calls: list[dict[str, Any]] = []

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append({"args": args, "kwargs": kwargs})

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def test_same_seed_same_video_other_seed_other_video(tiny_pipeline: VideoPipeline) -> None:
    a = tiny_pipeline.generate(params_of(request(), seed=11))
    b = tiny_pipeline.generate(params_of(request(), seed=11))
    c = tiny_pipeline.generate(params_of(request(), seed=12))
    assert a.frames.shape == (25, 64, 64, 3)
    assert a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)
    assert np.array_equal(np.asarray(a.first_frame), np.asarray(b.first_frame))
    assert not np.array_equal(a.frames, c.frames)
    assert not np.array_equal(np.asarray(a.first_frame), np.asarray(c.first_frame))


@pytest.mark.parametrize(
    ("conditioning", "fps_id"),
    [
        (FPS_FROM_PRESET, 6.0),  # what the model was fine-tuned at, whatever the playback rate
        (FPS_FROM_REQUEST, 9.0),  # diffusers: the request's fps - 1
    ],
)
def test_added_time_ids_carry_fps_motion_bucket_and_cond_aug(
    tiny_pipeline: VideoPipeline, conditioning: str, fps_id: float
) -> None:
    assert tiny_pipeline.preset.fps_id == 6
    tiny_pipeline.fps_conditioning = conditioning
    try:
        with recorded_calls(tiny_pipeline.video.unet) as calls:
            video = tiny_pipeline.generate(
                params_of(request(fps=10, motion_bucket_id=200, cond_aug=0.5, steps=3), seed=1)
            )
    finally:
        tiny_pipeline.fps_conditioning = FPS_FROM_PRESET
    assert video.fps == 10  # the MP4 plays at the request's fps either way
    assert len(calls) == 3  # steps: one U-Net call per Euler step
    for call in calls:
        ids = call["kwargs"]["added_time_ids"]
        # [uncond, cond] x (fps id, motion bucket, noise augmentation)
        want = torch.tensor([[fps_id, 200.0, 0.5], [fps_id, 200.0, 0.5]])
        assert torch.allclose(ids, want)


def test_cond_aug_noises_the_conditioning_frame(tiny_pipeline: VideoPipeline) -> None:
    conditioning = []
    for cond_aug in (0.0, 0.5):
        with recorded_calls(tiny_pipeline.video.unet) as calls:
            tiny_pipeline.generate(params_of(request(cond_aug=cond_aug, steps=1), seed=3))
        # sample: [cfg, frames, 4 noisy + 4 conditioning channels, h, w]
        conditioning.append(calls[0]["args"][0][1, :, 4:])
    assert not torch.equal(conditioning[0], conditioning[1])


def test_steps_and_size_reach_the_models(tiny_pipeline: VideoPipeline) -> None:
    with recorded_calls(tiny_pipeline.video.unet) as calls:
        video = tiny_pipeline.generate(
            params_of(request(steps=4, video_size={"width": 128, "height": 64}), seed=2)
        )
    assert len(calls) == 4
    assert calls[0]["args"][0].shape == (2, 25, 8, 64 // 8, 128 // 8)
    assert video.first_frame.size == (128, 64)
    assert video.frames.shape == (25, 64, 128, 3)


@pytest.mark.parametrize(
    "change",
    [{"negative_prompt": "blurry, dark"}, {"prompt": "a sailing ship"}],
    ids=["negative_prompt", "prompt"],
)
def test_text_changes_the_first_frame(tiny_pipeline: VideoPipeline, change: dict[str, str]) -> None:
    base = tiny_pipeline.generate(params_of(request(steps=1), seed=5))
    changed = tiny_pipeline.generate(params_of(request(steps=1, **change), seed=5))
    assert not np.array_equal(np.asarray(base.first_frame), np.asarray(changed.first_frame))


def test_progress_hook_sees_every_step_of_every_stage(tiny_pipeline: VideoPipeline) -> None:
    events: list[StepEvent] = []
    hooks = Hooks(on_step=events.append)
    video = tiny_pipeline.generate(params_of(request(steps=3), seed=1), hooks=hooks)
    tiny_pipeline.to_mp4(video, hooks)
    first = tiny_pipeline.preset.base.first_frame_steps
    expected = (
        [(Stage.first_frame, i, first) for i in range(1, first + 1)]
        + [(Stage.video, i, 3) for i in range(1, 4)]
        + [(Stage.decode, 1, 1)]
        + [(Stage.export, i, 25) for i in range(1, 26)]
    )
    assert [(e.stage, e.step, e.total) for e in events] == expected
    assert set(video.timings_s) == set(Stage)


@pytest.mark.parametrize(
    ("stage", "after_steps"),
    [(Stage.first_frame, 2), (Stage.video, 1), (Stage.video, 3)],
)
def test_cancel_stops_within_one_step(
    tiny_pipeline: VideoPipeline, stage: Stage, after_steps: int
) -> None:
    done: list[StepEvent] = []

    def on_step(event: StepEvent) -> None:
        done.append(event)

    def should_cancel() -> bool:
        return sum(e.stage == stage for e in done) >= after_steps

    unet = tiny_pipeline.first_frame.unet if stage == Stage.first_frame else None
    unet = unet or tiny_pipeline.video.unet
    with recorded_calls(unet) as calls, pytest.raises(GenerationCancelled):
        tiny_pipeline.generate(
            params_of(request(steps=5), seed=1),
            hooks=Hooks(on_step=on_step, should_cancel=should_cancel),
        )
    # the U-Net ran exactly the steps before the cancel, not one more
    assert len(calls) == after_steps
    assert done[-1] == StepEvent(stage, after_steps, done[-1].total)


def test_cancel_during_export(tiny_pipeline: VideoPipeline) -> None:
    video = tiny_pipeline.generate(params_of(request(steps=1), seed=1))
    exported: list[StepEvent] = []
    hooks = Hooks(on_step=exported.append, should_cancel=lambda: len(exported) >= 4)
    with pytest.raises(GenerationCancelled):
        tiny_pipeline.to_mp4(video, hooks)
    assert len(exported) == 4


def test_image_to_video_animates_the_given_picture(tiny_pipeline: VideoPipeline) -> None:
    # left half red, right half blue, 3:1: fitting to a square keeps the centre, both colours
    picture = Image.new("RGB", (300, 100), (220, 20, 20))
    picture.paste((20, 20, 220), (150, 0, 300, 100))
    req = ImageToVideoInput(image_url="data:,", steps=2, video_size={"width": 128, "height": 64})
    with recorded_calls(tiny_pipeline.first_frame.unet) as t2i_calls:
        video = tiny_pipeline.generate(params_of(req, 4, picture))
    assert t2i_calls == []  # no first frame drawn
    assert video.frames.shape == (25, 64, 128, 3)
    first = np.asarray(video.first_frame)
    assert first.shape == (64, 128, 3)
    assert first[32, 10].tolist() == [220, 20, 20]
    assert first[32, 118].tolist() == [20, 20, 220]


def test_image_to_video_without_size_uses_the_closest_preset_aspect(
    tiny_pipeline: VideoPipeline,
) -> None:
    picture = Image.new("RGB", (90, 160), (0, 128, 0))
    req = ImageToVideoInput(image_url="data:,", steps=1)
    seen: list[Image.Image] = []
    with pytest.raises(GenerationCancelled):  # stop before the (large) video is made
        tiny_pipeline.generate(
            params_of(req, 4, picture),
            hooks=Hooks(on_first_frame=seen.append, should_cancel=lambda: True),
        )
    assert seen[0].size == (576, 1024)  # portrait_16_9


def test_params_take_a_prompt_or_an_image_exactly_one() -> None:
    fields: dict[str, Any] = {
        "width": 64, "height": 64, "steps": 1, "fps": 6, "motion_bucket_id": 127,
        "noise_aug_strength": 0.02, "seed": 0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="exactly one"):
        GenerationParams(**fields)
    with pytest.raises(ValueError, match="exactly one"):
        GenerationParams(**fields, prompt="a rocket", image=Image.new("RGB", (64, 64)))


def test_warm_up_compiles_at_fals_default_size() -> None:
    size = TextToVideoInput(prompt="a rocket").video_size
    assert (size.width, size.height) == WARM_UP_SIZE
