"""Shared fixtures: the tiny preset, loaded once per test session."""

from __future__ import annotations

import os
from pathlib import Path

# Nothing in the suite may reach a model hub; the loading tests point at their own caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
import torch

from fastsvd.pipeline.quiet import quiet_libraries

quiet_libraries()

from bench.stock import Stock  # noqa: E402

from fastsvd.pipeline.core import VideoPipeline  # noqa: E402
from fastsvd.pipeline.device import choose  # noqa: E402
from fastsvd.pipeline.loading import load_pipeline  # noqa: E402
from fastsvd.pipeline.presets import TINY  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pipeline() -> VideoPipeline:
    """The tiny preset on the CPU in float32 (tests must not change its models)."""
    return load_pipeline(TINY, choose("cpu", "fp32"))


@pytest.fixture(scope="session")
def tiny_folders(
    tiny_pipeline: VideoPipeline, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The tiny preset's video and first-frame models saved as diffusers folders (fp32), for
    loading by fastsvd and by diffusers itself: (video folder, first-frame folder)."""
    root = tmp_path_factory.mktemp("tiny-folders")
    assert tiny_pipeline.first_frame is not None
    tiny_pipeline.video.save_pretrained(root / "video")
    tiny_pipeline.first_frame.save_pretrained(root / "first-frame")
    return root / "video", root / "first-frame"


@pytest.fixture(scope="session")
def stock_fp32(tiny_folders: tuple[Path, Path]) -> Stock:
    """diffusers' own pipelines, from_pretrained from the tiny folders in fp32."""
    return Stock.load(TINY, *tiny_folders, torch.float32)
