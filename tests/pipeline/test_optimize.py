"""Optimizations meant to be lossless: with them on, the tiny preset's frames match the stock
pipelines (without them) within one level of 255 per pixel; and unknown names are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench.stock import Stock

from fastsvd.errors import FastSVDError
from fastsvd.hooks import Stage
from fastsvd.pipeline import optimize
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.device import choose
from fastsvd.pipeline.loading import load_pipeline
from fastsvd.pipeline.presets import FEW_STEP, TINY
from fastsvd.runner import params_of
from fastsvd.schema import TextToVideoInput

TOLERANCE = 1  # levels of 255: float reordering may flip a rounding, nothing more


@pytest.mark.parametrize("names", [("channels_last",), ("fuse_qkv",)])
def test_lossless_optimizations_match_the_stock_pipelines(
    stock_fp32: Stock, names: tuple[str, ...]
) -> None:
    req = TextToVideoInput.model_validate(
        {"prompt": "a rocket", "video_size": {"width": 64, "height": 64}, "steps": 3}
    )
    optimized = load_pipeline(TINY, choose("cpu", "fp32"), optimizations=names)
    if "channels_last" in names:
        assert optimized.video.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    if "fuse_qkv" in names:
        processors = optimized.video.unet.attn_processors.values()
        assert {type(p).__name__ for p in processors} == {"FusedAttnProcessor2_0"}
    ours = optimized.generate(params_of(req, seed=5)).frames
    params = params_of(req, seed=5)
    _first_frame, baseline = stock_fp32.generate(params, optimized.fps_id(params.fps))
    difference = np.abs(ours.astype(int) - baseline.astype(int))
    assert difference.max() <= TOLERANCE, difference.max()


def test_unknown_optimizations_are_refused_by_name() -> None:
    assert optimize.parse(" channels_last, ") == ("channels_last",)
    assert optimize.parse(None) == ()
    with pytest.raises(FastSVDError, match=r"'turbo'.*FASTSVD_OPTIMIZE"):
        optimize.parse("channels_last,turbo")
    with pytest.raises(FastSVDError, match="FASTSVD_MEMORY_MODE=offload-first-frame"):
        optimize.parse("low_memory")


def test_fp8_is_for_the_video_unets_only(tiny_pipeline: VideoPipeline) -> None:
    # SDXL pipelines carry an image_encoder attribute too (None): they are left alone
    optimize.apply(
        [tiny_pipeline.first_frame, tiny_pipeline.model(FEW_STEP, Stage.first_frame)], ("fp8",)
    )
    for video in (tiny_pipeline.video, tiny_pipeline.model(FEW_STEP, Stage.video)):
        with pytest.raises(FastSVDError, match="fp8 needs a CUDA GPU"):
            optimize.apply([video], ("fp8",))
