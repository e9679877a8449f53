"""Compilation: compiled equals eager, fullgraph (no graph break), no recompilation across the
steps of a request or between requests of one size, and a persisted inductor cache that a second
compile hits.

The shared compiled pipeline uses dynamo with its ``eager`` backend (the graphs dynamo captures,
its guards and recompilations are those of any backend, and tracing takes seconds); inductor
itself is exercised on DeepCache's shallow graph, whose cold CPU compile is short. Set
``FASTSVD_TEST_COMPILE_BACKEND=inductor`` to run the whole file on inductor (minutes on a CPU).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from fastsvd.errors import FastSVDError
from fastsvd.pipeline import compile as compiling
from fastsvd.pipeline.compile import CompileOptions
from fastsvd.pipeline.core import VideoPipeline, load_pipeline
from fastsvd.pipeline.device import choose
from fastsvd.pipeline.presets import TINY
from fastsvd.runner import params_of
from fastsvd.schema import DeepCache, ImageSize, TextToVideoInput

SIZE = ImageSize(width=64, height=64)
BACKEND = os.environ.get("FASTSVD_TEST_COMPILE_BACKEND", "eager")
# levels of 255 per pixel, compiled against eager: 0 with dynamo's eager backend; inductor may
# reorder float sums and flip a rounding
TOLERANCE = 1


# First in the file: it resets dynamo, which must not throw away the shared pipeline's graphs.
# inductor's own imports touch torch.jit (torch 2.13 warns about it)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_inductor_matches_eager_and_a_restarted_compile_hits_the_persisted_cache(
    tiny_pipeline: VideoPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    folder = compiling.use_cache_dir(tmp_path / "compile-cache")
    # one of the U-Net's repeated blocks (what regional compilation compiles), kept small
    block = tiny_pipeline.video.unet.up_blocks[3].resnets[2]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 64, 8, 8, generator=g)  # [cfg * frames, channels, h, w]
    temb = torch.randn(50, 128, generator=g)
    indicator = torch.zeros(2, 25)
    with torch.inference_mode():
        expected = block(hidden, temb, image_only_indicator=indicator)
        results, hits = [], []
        for _ in range(2):  # the second time as a restarted process would: nothing in memory
            torch._dynamo.reset()
            counters.clear()
            fn = CompileOptions().wrap(block.forward)
            results.append(fn(hidden, temb, image_only_indicator=indicator))
            hits.append(counters["inductor"]["fxgraph_cache_hit"])
    torch._dynamo.reset()
    assert hits == [0, 1]
    assert any(folder.iterdir())
    for result in results:
        torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def compiled() -> tuple[VideoPipeline, CompileCounterWithBackend]:
    """One compiled tiny pipeline (the video U-Net's graphs), warmed up at 64x64."""
    counter = CompileCounterWithBackend(BACKEND)
    options = CompileOptions(backend=counter, first_frame=False, decoders=False)
    pipe = load_pipeline(TINY, choose("cpu", "fp32"), compile=options)
    counters.clear()
    pipe.warm_up((SIZE.width, SIZE.height))
    return pipe, counter


def request(level: DeepCache, steps: int = 4) -> TextToVideoInput:
    return TextToVideoInput(prompt="a rocket", video_size=SIZE, steps=steps, deep_cache=level)


def test_warm_up_builds_every_graph_without_a_graph_break(
    compiled: tuple[VideoPipeline, CompileCounterWithBackend],
) -> None:
    _pipe, counter = compiled
    assert counter.frame_count == 3  # the full forward and the shallow forward of cuts 0 and 1
    assert not counters["graph_break"]


@pytest.mark.parametrize("level", list(DeepCache))
def test_compiled_equals_eager_and_no_request_recompiles(
    compiled: tuple[VideoPipeline, CompileCounterWithBackend],
    tiny_pipeline: VideoPipeline,
    level: DeepCache,
) -> None:
    pipe, counter = compiled
    with torch._dynamo.config.patch(error_on_recompile=True):
        ours = pipe.generate(
            params_of(request(level), seed=3)
        ).frames  # steps 0..3: full and shallow
        pipe.generate(
            params_of(request(level, steps=5), seed=4)
        )  # another request of the same size
    assert counter.frame_count == 3
    assert not counters["graph_break"]
    eager = tiny_pipeline.generate(params_of(request(level), seed=3)).frames
    difference = np.abs(ours.astype(int) - eager.astype(int))
    assert difference.max() <= TOLERANCE, difference.max()


def test_the_setting_turns_compilation_on_off_or_regional() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compiling.parse(None, cpu) is None
    assert compiling.parse(None, cuda) == CompileOptions()
    assert compiling.parse("0", cuda) is None
    assert compiling.parse("1", cpu) == CompileOptions()
    assert compiling.parse("regional", cpu) == CompileOptions(regional=True)
    with pytest.raises(FastSVDError, match="FASTSVD_COMPILE"):
        compiling.parse("fast", cpu)
