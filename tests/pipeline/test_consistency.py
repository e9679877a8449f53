"""The few-step sampler against values derived by hand, and the few-step family end to end."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from fastsvd.hooks import Stage
from fastsvd.pipeline.consistency import (
    SIGMA_MAX,
    ConsistencySampler,
    boundary_scalings,
    sigmas_for,
)
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.params import GenerationParams
from fastsvd.pipeline.presets import FEW_STEP
from fastsvd.runner import params_of
from fastsvd.schema import FewStepImageToVideoInput, FewStepTextToVideoInput
from tests.pipeline.test_core import recorded_calls

# By hand: sigma(r) = (a + r (b - a))^7 with a = 700^(1/7) = e^(6.55108 / 7) = 2.54947 and
# b = 0.002^(1/7) = e^(-6.21461 / 7) = 0.411559, so b - a = -2.13791; r = k / 39.
#   4 steps (k = 0, 10, 20, 30): 2.54947^7 = 700;
#     r = 0.256410: 2.00129^7 = e^(7 x 0.693792) = e^4.85654 = 128.57
#     r = 0.512821: 1.45311^7 = e^(7 x 0.373706) = e^2.61594 = 13.681
#     r = 0.769231: 0.904920^7 = e^(7 x -0.099910) = e^-0.69937 = 0.49690
#   20 steps (k = 0, 2, ..., 38): r = 2/39: 2.43983^7 = e^(7 x 0.891929) = 514.3;
#     r = 38/39: 0.466383^7 = e^(7 x -0.762731) = e^-5.33912 = 0.0048007
HAND_4 = [700.0, 128.57, 13.681, 0.49690]


def test_one_step_is_sigma_max_alone() -> None:
    assert sigmas_for(1) == pytest.approx([700.0], rel=1e-9)


def test_four_steps_match_the_hand_derivation() -> None:
    assert sigmas_for(4) == pytest.approx(HAND_4, rel=1e-3)


def test_twenty_steps_match_the_hand_derivation() -> None:
    sigmas = sigmas_for(20)
    assert len(sigmas) == 20
    assert sigmas[0] == pytest.approx(700.0, rel=1e-9)
    assert sigmas[1] == pytest.approx(514.3, rel=1e-3)
    assert sigmas[-1] == pytest.approx(0.0048007, rel=1e-3)
    assert all(a > b for a, b in itertools.pairwise(sigmas))


def test_steps_beyond_the_training_grid_are_refused() -> None:
    with pytest.raises(ValueError, match="1-40"):
        sigmas_for(41)


def test_timesteps_are_a_quarter_log_sigma() -> None:
    sampler = ConsistencySampler()
    sampler.set_timesteps(4)
    assert sampler.timesteps.tolist() == pytest.approx(
        [0.25 * math.log(s) for s in HAND_4], rel=1e-3
    )


def test_boundary_condition_holds_at_zero_noise() -> None:
    assert boundary_scalings(0.0) == (1.0, 0.0)  # f(x, 0) = x


def test_a_single_step_is_the_closed_form_estimate() -> None:
    sampler = ConsistencySampler()
    sampler.set_timesteps(1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 4, 8, 8, generator=generator) * sampler.init_noise_sigma
    model_output = torch.randn(x.shape, generator=generator)
    sampler.begin(x, torch.Generator().manual_seed(1))
    scaled = sampler.scale_model_input(x, sampler.timesteps[0])
    torch.testing.assert_close(scaled, x / math.sqrt(SIGMA_MAX**2 + 1))
    got = sampler.step(model_output, sampler.timesteps[0], x)
    # c_skip = 1 / (700^2 + 1), c_out = -700 / sqrt(700^2 + 1): no noise after the last step
    want = x / (SIGMA_MAX**2 + 1) - SIGMA_MAX / math.sqrt(SIGMA_MAX**2 + 1) * model_output
    torch.testing.assert_close(got, want)


def test_steps_renoise_to_the_next_level_with_the_drawn_noise() -> None:
    sampler = ConsistencySampler()
    sampler.set_timesteps(2)
    x = torch.ones(1, 2, 2)
    out = torch.zeros(1, 2, 2)
    sampler.begin(x, torch.Generator().manual_seed(7))
    noise = torch.randn((1, 1, 2, 2), generator=torch.Generator().manual_seed(7))[0]
    sigma0, sigma1 = sigmas_for(2)
    sampler.scale_model_input(x, sampler.timesteps[0])
    first = sampler.step(out, sampler.timesteps[0], x)
    torch.testing.assert_close(first, x / (sigma0**2 + 1) + sigma1 * noise)
    sampler.scale_model_input(first, sampler.timesteps[1])
    last = sampler.step(out, sampler.timesteps[1], first)
    torch.testing.assert_close(last, first / (sigma1**2 + 1))


def batch(call: dict[str, Any]) -> int:
    return int(call["args"][0].shape[0])


def few_step(steps: int = 4, seed: int = 3) -> GenerationParams:
    request = FewStepTextToVideoInput(
        prompt="a rocket", video_size={"width": 64, "height": 64}, steps=steps
    )
    return params_of(request, seed)


def test_same_seed_same_video_and_another_seed_another(tiny_pipeline: VideoPipeline) -> None:
    first = tiny_pipeline.generate(few_step(seed=3))
    again = tiny_pipeline.generate(few_step(seed=3))
    other = tiny_pipeline.generate(few_step(seed=4))
    assert np.array_equal(first.frames, again.frames)
    assert not np.array_equal(first.frames, other.frames)


def test_few_step_runs_its_own_unets_with_the_authors_guidance(
    tiny_pipeline: VideoPipeline,
) -> None:
    assert tiny_pipeline.model(FEW_STEP, Stage.video) is not None
    assert tiny_pipeline.model(FEW_STEP, Stage.first_frame) is not None
    with (
        recorded_calls(tiny_pipeline.model(FEW_STEP, Stage.video).unet) as video_calls,
        recorded_calls(tiny_pipeline.video.unet) as teacher_calls,
        recorded_calls(tiny_pipeline.model(FEW_STEP, Stage.first_frame).unet) as frame_calls,
    ):
        tiny_pipeline.generate(few_step(steps=4))
    assert len(video_calls) == 4
    assert not teacher_calls
    assert len(frame_calls) == 4  # SDXL-Lightning's 4 steps
    # the ramp 1.0 -> 1.2 needs the unconditional half: a batch of two per step
    assert {batch(call) for call in video_calls} == {2}
    assert batch(frame_calls[0]) == 1  # Lightning: no classifier-free guidance


def test_guidance_off_is_one_batch(tiny_pipeline: VideoPipeline) -> None:
    saved = tiny_pipeline.families[FEW_STEP]
    tiny_pipeline.families[FEW_STEP] = replace(saved, max_guidance_scale=1.0)
    try:
        assert tiny_pipeline.model(FEW_STEP, Stage.video) is not None
        with recorded_calls(tiny_pipeline.model(FEW_STEP, Stage.video).unet) as calls:
            tiny_pipeline.generate(few_step(steps=2))
    finally:
        tiny_pipeline.families[FEW_STEP] = saved
    assert [batch(call) for call in calls] == [1, 1]


def test_few_step_image_to_video_draws_no_first_frame(tiny_pipeline: VideoPipeline) -> None:
    from PIL import Image

    request = FewStepImageToVideoInput(
        image_url="data:,", steps=2, video_size={"width": 64, "height": 64}
    )
    picture = Image.new("RGB", (96, 64), (200, 30, 30))
    params = params_of(request, 5, picture)
    assert params.family == FEW_STEP
    assert params.prompt is None
    assert tiny_pipeline.model(FEW_STEP, Stage.first_frame) is not None
    with recorded_calls(tiny_pipeline.model(FEW_STEP, Stage.first_frame).unet) as frame_calls:
        video = tiny_pipeline.generate(params)
    assert not frame_calls
    assert video.frames.shape[0] == 25


def test_lightning_samples_trailing_euler_timesteps(tiny_pipeline: VideoPipeline) -> None:
    lightning = tiny_pipeline.model(FEW_STEP, Stage.first_frame)
    assert lightning is not None
    scheduler = lightning.scheduler
    scheduler.set_timesteps(4)
    # SDXL-Lightning's 4-step schedule: trailing spacing over 1000 training steps
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]
    assert tiny_pipeline.first_frame is not None
    assert lightning.vae is tiny_pipeline.first_frame.vae  # shared, not a copy
    assert lightning.unet is not tiny_pipeline.first_frame.unet


def test_bf16_consistency_steps_run_in_fp32() -> None:
    from PIL import Image

    from fastsvd.pipeline.device import choose
    from fastsvd.pipeline.loading import load_pipeline
    from fastsvd.pipeline.presets import TINY

    few = load_pipeline(
        replace(TINY, num_frames=4),  # bf16 kernels are slow on a CPU: a short clip
        choose("cpu", "bf16"),
        models=frozenset({(FEW_STEP, Stage.video)}),
    )
    assert few.model(FEW_STEP, Stage.video) is not None
    assert few.model(FEW_STEP, Stage.video).unet.dtype == torch.bfloat16
    sampler = few.model(FEW_STEP, Stage.video).scheduler
    assert isinstance(sampler, ConsistencySampler)
    seen: list[tuple[torch.dtype, torch.dtype, torch.dtype]] = []
    step = sampler.step

    def recorded(output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        after = step(output, t, sample)
        seen.append((output.dtype, sample.dtype, after.dtype))
        return after

    sampler.step = recorded  # type: ignore[method-assign]
    request = FewStepImageToVideoInput(
        image_url="data:,", steps=2, video_size={"width": 64, "height": 64}, num_frames=4
    )
    few.generate(params_of(request, 1, Image.new("RGB", (64, 64), (90, 120, 30))))
    # c_skip * x + c_out * F + sigma * z: the U-Net's bf16 output mixed in fp32, for every step
    assert seen == [(torch.float32, torch.float32, torch.float32)] * 2
