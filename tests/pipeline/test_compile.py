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

import pytest
import torch
from torch._dynamo.utils import counters

from fastsvd.errors import FastSVDError
from fastsvd.pipeline import compile as compiling
from fastsvd.pipeline.compile import CompileOptions, GraphState
from fastsvd.pipeline.core import VideoPipeline


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
            fn.state = GraphState.warming  # compiling (until then: eager)
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
    assert compiling.parse("0", cuda) is None
    assert compiling.parse("1", cpu) == CompileOptions()
    assert compiling.parse("regional", cpu) == CompileOptions(regional=True)
    with pytest.raises(FastSVDError, match="FASTSVD_COMPILE"):
        compiling.parse("fast", cpu)
