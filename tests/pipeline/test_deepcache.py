"""DeepCache: full steps equal the stock U-Net, and each level skips the deep blocks on schedule."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from fastsvd.hooks import Hooks, StepEvent
from fastsvd.pipeline.core import VideoPipeline
from fastsvd.pipeline.deepcache import LEVELS, CachedUNet, CacheSchedule
from fastsvd.runner import params_of
from fastsvd.schema import DeepCache, TextToVideoInput


def unet_inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 25, 8, 8, 8, generator=g)  # [cfg, frames, 4 + 4, h, w]
    embeddings = torch.randn(2, 1, 32, generator=g)
    time_ids = torch.tensor([[9.0, 127.0, 0.02]] * 2)
    return sample, torch.tensor(1.3), embeddings, time_ids


@pytest.mark.parametrize("branch", range(11))
def test_full_step_equals_the_stock_unet_bit_for_bit(
    tiny_pipeline: VideoPipeline, branch: int
) -> None:
    unet = tiny_pipeline.video.unet
    cached = CachedUNet(unet, CacheSchedule(interval=3, branch=branch))
    sample, t, emb, ids = unet_inputs()
    with torch.inference_mode():
        stock = unet(sample, t, encoder_hidden_states=emb, added_time_ids=ids).sample
        full = cached.forward(sample, t, emb, ids, full=True)
        # same inputs again, from the cache: the shallow path must rebuild the same output
        retrieved = cached.forward(sample, t, emb, ids, full=False)
    assert torch.equal(full, stock)
    assert torch.equal(retrieved, stock)


def test_retrieval_step_differs_when_inputs_move(tiny_pipeline: VideoPipeline) -> None:
    unet = tiny_pipeline.video.unet
    cached = CachedUNet(unet, CacheSchedule(interval=2, branch=1))
    sample, t, emb, ids = unet_inputs(0)
    moved = unet_inputs(1)[0]
    with torch.inference_mode():
        cached.forward(sample, t, emb, ids, full=True)
        retrieved = cached.forward(moved, t, emb, ids, full=False)
        fresh = unet(moved, t, encoder_hidden_states=emb, added_time_ids=ids).sample
    assert not torch.equal(retrieved, fresh)  # the deep feature really came from the cache


def test_branch_outside_the_unet_is_refused(tiny_pipeline: VideoPipeline) -> None:
    with pytest.raises(ValueError, match=r"branch must be in 0\.\.10"):
        CachedUNet(tiny_pipeline.video.unet, CacheSchedule(interval=2, branch=11))


@contextmanager
def counted(modules: dict[str, nn.Module], step: list[int]) -> Iterator[Counter[tuple[str, int]]]:
    """Counts calls of each named module per denoising step (step[0] is kept current)."""
    counts: Counter[tuple[str, int]] = Counter()
    handles = [
        m.register_forward_pre_hook(lambda *_a, n=name: counts.update([(n, step[0])]))
        for name, m in modules.items()
    ]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


# The modules on either side of each level's cut, for SVD's layout (2 layers a block):
# skip 0 = conv_in, 1 = down_blocks[0] layer 0, 2 = down_blocks[0] layer 1, 3 = its downsampler;
# up_blocks[3].resnets[2] consumes skip 0, [1] consumes skip 1, [0] consumes skip 2.
CUT = {
    # branch: (modules run every step, modules run on full steps only)
    0: (["up3.r2"], ["down0.r0", "up3.r1", "mid"]),
    1: (["down0.r0", "up3.r1", "up3.r2"], ["down0.r1", "up3.r0", "mid"]),
}


@pytest.mark.parametrize("level", [DeepCache.minimum, DeepCache.medium, DeepCache.high])
def test_level_skips_deep_blocks_on_the_expected_steps(
    tiny_pipeline: VideoPipeline, level: DeepCache
) -> None:
    schedule = LEVELS[level]
    assert schedule is not None
    unet = tiny_pipeline.video.unet
    modules = {
        "down0.r0": unet.down_blocks[0].resnets[0],
        "down0.r1": unet.down_blocks[0].resnets[1],
        "mid": unet.mid_block,
        "up3.r0": unet.up_blocks[3].resnets[0],
        "up3.r1": unet.up_blocks[3].resnets[1],
        "up3.r2": unet.up_blocks[3].resnets[2],
    }
    steps = 7
    step = [0]

    def on_step(event: StepEvent) -> None:
        if event.stage == "video":
            step[0] = event.step  # the next U-Net call belongs to the next step

    req = TextToVideoInput(
        prompt="a rocket",
        video_size={"width": 64, "height": 64},
        steps=steps,
        deep_cache=level,
    )
    with counted(modules, step) as counts:
        tiny_pipeline.generate(params_of(req, seed=0), hooks=Hooks(on_step=on_step))

    full_steps = [i for i in range(steps) if i % schedule.interval == 0]
    always, deep = CUT[schedule.branch]
    for name in always:
        assert [counts[(name, i)] for i in range(steps)] == [1] * steps, name
    for name in deep:
        ran = [i for i in range(steps) if counts[(name, i)]]
        assert ran == full_steps, name
    assert len(full_steps) == {2: 4, 3: 3}[schedule.interval]


def test_levels_change_the_video_and_none_is_the_default(tiny_pipeline: VideoPipeline) -> None:
    base = TextToVideoInput(prompt="a rocket", video_size={"width": 64, "height": 64}, steps=4)
    assert base.deep_cache == DeepCache.none
    none = tiny_pipeline.generate(params_of(base, seed=8)).frames
    high = tiny_pipeline.generate(
        params_of(base.model_copy(update={"deep_cache": DeepCache.high}), seed=8)
    ).frames
    assert not np.array_equal(none, high)


def test_levels_are_named_as_fals_deep_cache_values() -> None:
    assert list(LEVELS) == list(DeepCache)  # each level mapped once, in the schema's order
