"""Optimizations meant to be lossless: with them on, the tiny preset's frames match the stock
pipelines (without them) within one level of 255 per pixel; and unknown names are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastsvd.errors import FastSVDError
from fastsvd.pipeline import optimize, stock
from fastsvd.pipeline.core import VideoPipeline, load_pipeline
from fastsvd.pipeline.device import choose
from fastsvd.pipeline.presets import TINY
from fastsvd.schema import TextToVideoInput

TOLERANCE = 1  # levels of 255: float reordering may flip a rounding, nothing more


@pytest.mark.parametrize("names", [("channels_last",)])
def test_lossless_optimizations_match_the_stock_pipelines(
    tiny_pipeline: VideoPipeline, names: tuple[str, ...]
) -> None:
    req = TextToVideoInput.model_validate(
        {"prompt": "a rocket", "video_size": {"width": 64, "height": 64}, "steps": 3}
    )
    optimized = load_pipeline(TINY, choose("cpu", "fp32"), optimizations=names)
    assert optimized.video.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    ours = optimized.text_to_video(req, seed=5).frames
    _first_frame, baseline = stock.text_to_video(tiny_pipeline, req, seed=5)
    difference = np.abs(ours.astype(int) - baseline.astype(int))
    assert difference.max() <= TOLERANCE, difference.max()


def test_unknown_optimizations_are_refused_by_name() -> None:
    assert optimize.parse(" channels_last, ") == ("channels_last",)
    assert optimize.parse(None) == ()
    with pytest.raises(FastSVDError, match=r"'turbo'.*FASTSVD_OPTIMIZE"):
        optimize.parse("channels_last,turbo")
