"""Compilation: inductor's output equals eager and a second compile hits the persisted cache;
the setting.

The whole compiled pipeline (compiled equals eager for deep_cache none and every level, no graph
break, no recompilation across the steps of a request or between requests of one size) is
checked by the device run's CPU dry run (``test_gpu_bench.py``), which compiles it once with
dynamo's ``eager`` backend (the graphs dynamo captures, its guards and recompilations are those
of any backend, and tracing takes seconds); inductor itself is exercised here on DeepCache's
shallow graph, whose cold CPU compile is short.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch._dynamo.utils import counters

from fastsvd.errors import FastSVDError
from fastsvd.pipeline import compile as compiling
from fastsvd.pipeline.compile import CompileOptions, GraphState
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.device import choose
from fastsvd.pipeline.loading import load_pipeline
from fastsvd.pipeline.params import GenerationParams
from fastsvd.pipeline.presets import TINY


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


def test_the_setting_turns_compilation_on_off_or_regional() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compiling.parse(None, cpu) is None
    assert compiling.parse(None, cuda) == CompileOptions()
    assert compiling.parse(None, cuda, serving=False) is None  # fastsvd generate: when asked
    assert compiling.parse("1", cuda, serving=False) == CompileOptions()
    assert compiling.parse("0", cuda) is None
    assert compiling.parse("1", cpu) == CompileOptions()
    assert compiling.parse("regional", cpu) == CompileOptions(regional=True)
    with pytest.raises(FastSVDError, match="FASTSVD_COMPILE"):
        compiling.parse("fast", cpu)


def test_a_guarded_graph_runs_compiled_at_its_warmed_shape_and_eagerly_at_32_others(
    tiny_pipeline: VideoPipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # dynamo as strict as can be: one graph per function, the limit an error
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    block = tiny_pipeline.video.unet.up_blocks[3].resnets[2]  # one of the U-Net's blocks

    def inputs(side: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(side)
        return torch.randn(4, 64, side, side, generator=g), torch.randn(4, 128, generator=g)

    torch._dynamo.reset()
    counters.clear()
    guarded = CompileOptions(backend="eager").wrap(block.forward)
    with torch.inference_mode():
        hidden, temb = inputs(2)
        guarded.state = GraphState.warming  # the warm-up, between jobs
        warmed = guarded(hidden, temb, image_only_indicator=torch.zeros(2, 2))
        compiles = counters["stats"]["unique_graphs"]
        guarded.state = GraphState.compiled  # swapped in
        # the swap changes nothing beyond the compiled tolerance (dynamo's own graph: none)
        torch.testing.assert_close(
            warmed, block(hidden, temb, image_only_indicator=torch.zeros(2, 2))
        )
        torch.testing.assert_close(
            guarded(hidden, temb, image_only_indicator=torch.zeros(2, 2)), warmed
        )
        for side in range(3, 35):  # 32 other sizes: all run, none reaches dynamo
            hidden, temb = inputs(side)
            out = guarded(hidden, temb, image_only_indicator=torch.zeros(2, 2))
            assert out.shape == (4, 32, side, side)
        assert guarded.eager_calls == 32
        assert counters["stats"]["unique_graphs"] == compiles
        # compiling every shape (fastsvd generate), the recompile limit is met at the second
        # one: that graph goes eager for good, with one warning, and the call still answers
        guarded.state = GraphState.warming
        hidden, temb = inputs(40)
        expected = block(hidden, temb, image_only_indicator=torch.zeros(2, 2))
        with caplog.at_level("WARNING", logger="fastsvd.compile"):
            for _ in range(2):
                result = guarded(hidden, temb, image_only_indicator=torch.zeros(2, 2))
                torch.testing.assert_close(result, expected)
    torch._dynamo.reset()
    assert guarded.state is GraphState.failed
    warnings = [r.getMessage() for r in caplog.records if r.name == "fastsvd.compile"]
    assert len(warnings) == 1
    assert "FailOnRecompileLimitHit" in warnings[0]


def test_an_injected_compile_failure_still_gives_the_request_its_video(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline = load_pipeline(TINY, choose("cpu", "fp32"), compile=CompileOptions(backend="eager"))
    assert pipeline.compiled is not None
    guards = pipeline.compiled.guards

    def broken(*_args: object, **_kwargs: object) -> None:
        # what dynamo raises from a compiled callable when a lowering fails
        raise torch._dynamo.exc.TorchDynamoException("lowering failed")

    for guard in guards:
        guard.compiled = broken
    params = GenerationParams(
        width=64, height=64, steps=1, fps=6, motion_bucket_id=127, noise_aug_strength=0.02,
        seed=3, image=Image.new("RGB", (64, 64), (200, 40, 40)),
    )  # fmt: skip
    eager = pipeline.generate(params).frames
    pipeline.compile_on_first_use()  # every graph compiles on this request, and fails
    with caplog.at_level("WARNING", logger="fastsvd.compile"):
        video = pipeline.generate(params).frames
    np.testing.assert_array_equal(video, eager)
    used = [g for g in guards if g.state is GraphState.failed]
    assert used  # the graphs this request ran: each turned eager, with one warning
    warnings = [r.getMessage() for r in caplog.records if r.name == "fastsvd.compile"]
    assert len(warnings) == len(used)
