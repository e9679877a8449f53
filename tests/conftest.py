"""Shared fixtures: the tiny preset, loaded once per test session."""

from __future__ import annotations

import os

# Nothing in the suite may reach a model hub; the loading tests point at their own caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest

from fastsvd.pipeline.quiet import quiet_libraries

quiet_libraries()

from fastsvd.pipeline.core import VideoPipeline, load_pipeline  # noqa: E402
from fastsvd.pipeline.device import choose  # noqa: E402
from fastsvd.pipeline.presets import TINY  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pipeline() -> VideoPipeline:
    """The tiny preset on the CPU in float32 (tests must not change its models)."""
    return load_pipeline(TINY, choose("cpu", "fp32"))
