"""Shared fixtures: the tiny preset, loaded once per test session (torch is imported only by
the tests that need it), and a webhook receiver."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Nothing in the suite may reach a model hub; the loading tests point at their own caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest

from tests.support.receivers import Receiver

if TYPE_CHECKING:
    from bench.stock import Stock

    from fastsvd.pipeline.core import VideoPipeline

# torch and diffusers are imported by the tests that run a model, not by every session.


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("model") is not None:
        from fastsvd.pipeline.quiet import quiet_libraries

        quiet_libraries()  # the model libraries' chatter stays out of the test output


@pytest.fixture(scope="session")
def tiny_pipeline() -> VideoPipeline:
    """The tiny preset on the CPU in float32 (tests must not change its models)."""
    from fastsvd.pipeline.device import choose
    from fastsvd.pipeline.loading import load_pipeline
    from fastsvd.pipeline.presets import TINY
    from fastsvd.pipeline.quiet import quiet_libraries

    quiet_libraries()
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
    import torch
    from bench.stock import Stock

    from fastsvd.pipeline.presets import TINY

    return Stock.load(TINY, *tiny_folders, torch.float32)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback (200 unless its script says otherwise)."""
    running = Receiver()
    yield running
    running.close()
