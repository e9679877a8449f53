"""DeepCache for the SVD-XT spatio-temporal U-Net.

The U-Net's deep features change slowly from one denoising step to the next (DeepCache,
arXiv 2312.00858). On a *full* step the whole U-Net runs and the hidden state that enters the up
path at a chosen skip connection (the *branch*) is kept; on the *retrieval* steps that follow, only
the shallow part runs: the down path as far as the branch, then the up path from the cached hidden
state, so the mid block and every deeper block are skipped.

The U-Net is walked as two flat lists. Down *units* each produce one skip tensor (``conv_in``, then
every resnet+attention layer and every downsampler of the down blocks, 12 for SVD-XT); up units
each consume one, in reverse (every layer of the up blocks, an up block's upsampler riding on its
last layer). Branch ``b`` keeps down units ``0..b`` and the last ``b + 1`` up units, which is the
numbering of the DeepCache helper (``cache_block_id = b // 3``, ``cache_layer_id = b % 3``).

A full step computes exactly what ``UNetSpatioTemporalConditionModel.forward`` computes; the tests
check it bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNetSpatioTemporalConditionModel
from torch import nn

from fastsvd.schema import DeepCache


@dataclass(frozen=True)
class CacheSchedule:
    """A full U-Net step every ``interval`` steps; retrieval steps cut at skip ``branch``."""

    interval: int
    branch: int

    def is_full_step(self, step: int) -> bool:
        """Whether step ``step`` (0-based) runs the whole U-Net."""
        return step % self.interval == 0


# The schedule of each level of fal's ``deep_cache`` input (``schema.DeepCache``, the one list
# of levels). Branch 1 at interval 3 is the setting the DeepCache authors published for SVD-XT;
# FLOP ratios are for the U-Net alone at 1024x576 (docs/deepcache.md).
LEVELS: dict[DeepCache, CacheSchedule | None] = {
    DeepCache.none: None,
    DeepCache.minimum: CacheSchedule(interval=2, branch=1),  # ~1.6x fewer U-Net FLOPs
    DeepCache.medium: CacheSchedule(interval=3, branch=1),  # ~2.0x
    DeepCache.high: CacheSchedule(interval=3, branch=0),  # ~2.6x
}
# The cuts the levels use: a pipeline's one full graph keeps the deep feature of each
BRANCHES: tuple[int, ...] = tuple(sorted({s.branch for s in LEVELS.values() if s is not None}))


@dataclass
class _Context:
    """What every unit of one forward needs besides the hidden state."""

    temb: torch.Tensor
    encoder_hidden_states: torch.Tensor
    image_only_indicator: torch.Tensor
    forward_upsample_size: bool


def _layer(
    resnet: nn.Module, attention: nn.Module | None, hidden: torch.Tensor, ctx: _Context
) -> torch.Tensor:
    """A spatio-temporal resnet, then its transformer if the block has one."""
    hidden = resnet(hidden, ctx.temb, image_only_indicator=ctx.image_only_indicator)
    if attention is not None:
        hidden = attention(
            hidden,
            encoder_hidden_states=ctx.encoder_hidden_states,
            image_only_indicator=ctx.image_only_indicator,
            return_dict=False,
        )[0]
    return hidden


class _DownUnit:
    """One skip-producing step of the down path after ``conv_in``."""

    def __init__(self, resnet: nn.Module, attention: nn.Module | None) -> None:
        self.resnet = resnet  # a resnet, or a downsampler when ``is_downsampler``
        self.attention = attention
        self.is_downsampler = not hasattr(resnet, "spatial_res_block")

    def __call__(self, hidden: torch.Tensor, ctx: _Context) -> torch.Tensor:
        if self.is_downsampler:
            out: torch.Tensor = self.resnet(hidden)
            return out
        return _layer(self.resnet, self.attention, hidden, ctx)


class _UpUnit:
    """One skip-consuming layer of the up path, with its block's upsampler if it is the last."""

    def __init__(
        self, resnet: nn.Module, attention: nn.Module | None, upsampler: nn.Module | None
    ) -> None:
        self.resnet = resnet
        self.attention = attention
        self.upsampler = upsampler

    def __call__(
        self,
        hidden: torch.Tensor,
        skip: torch.Tensor,
        next_skip: torch.Tensor | None,
        ctx: _Context,
    ) -> torch.Tensor:
        # hidden, skip: [batch * frames, channels, height, width], concatenated on channels
        hidden = _layer(self.resnet, self.attention, torch.cat([hidden, skip], dim=1), ctx)
        if self.upsampler is not None:
            size = None
            if ctx.forward_upsample_size and next_skip is not None:
                size = next_skip.shape[2:]
            hidden = self.upsampler(hidden, size)
        return hidden


def _units(unet: UNetSpatioTemporalConditionModel) -> tuple[list[_DownUnit], list[_UpUnit]]:
    down: list[_DownUnit] = []
    for block in unet.down_blocks:
        attentions: Sequence[nn.Module | None] = getattr(block, "attentions", None) or [None] * len(
            block.resnets
        )
        down.extend(_DownUnit(r, a) for r, a in zip(block.resnets, attentions, strict=True))
        if block.downsamplers is not None:
            down.extend(_DownUnit(d, None) for d in block.downsamplers)
    up: list[_UpUnit] = []
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        last = len(block.resnets) - 1
        for i, (resnet, attention) in enumerate(zip(block.resnets, attentions, strict=True)):
            upsampler = block.upsamplers[0] if i == last and block.upsamplers is not None else None
            up.append(_UpUnit(resnet, attention, upsampler))
    return down, up


class UNetGraphs:
    """The U-Net as a few stable functions, each one graph under ``torch.compile``.

    ``full`` runs the whole U-Net and also returns the deep feature of every branch in
    ``branches`` (the hidden state entering the up path at that cut); ``shallow[b]`` runs only
    the shallow part for branch ``b`` from such a feature. None of them takes the step index, and
    the timestep is a tensor, so a compiled graph never specialises on either: the steps of a
    request, and requests of one size, replay the same graphs. One instance serves a pipeline for
    its lifetime (it holds no per-request state).
    """

    def __init__(
        self, unet: UNetSpatioTemporalConditionModel, branches: Sequence[int] = (0, 1)
    ) -> None:
        self.unet = unet
        self._down, self._up = _units(unet)
        if 1 + len(self._down) != len(self._up):
            raise ValueError("U-Net down and up paths do not pair up; not an SVD U-Net")
        for branch in branches:
            if not 0 <= branch < self.num_skips - 1:
                raise ValueError(f"branch must be in 0..{self.num_skips - 2}, got {branch}")
        self.branches = tuple(branches)
        self.full: FullForward = self._full
        self.compiled = False
        self.shallow: dict[int, ShallowForward] = {b: _Shallow(self, b) for b in self.branches}

    @property
    def num_skips(self) -> int:
        """How many skip connections the U-Net has (12 for SVD-XT): conv_in's and the units'."""
        return 1 + len(self._down)

    def compile(self, compile_fn: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        """Replace ``full`` and every ``shallow`` forward by ``compile_fn`` of it."""
        self.full = compile_fn(self._full)
        self.shallow = {b: compile_fn(_Shallow(self, b)) for b in self.branches}
        self.compiled = True

    def _cut(self, branch: int) -> int:
        return len(self._up) - 1 - branch  # the first up unit a retrieval step runs

    def _full(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The whole U-Net: its output, and the deep feature of each of ``branches``."""
        unet = self.unet
        hidden, ctx, batch_size, num_frames = self._prepare(
            sample, timestep, encoder_hidden_states, added_time_ids
        )
        skips = [hidden]
        for unit in self._down:
            hidden = unit(hidden, ctx)
            skips.append(hidden)
        hidden = unet.mid_block(
            hidden_states=hidden,
            temb=ctx.temb,
            encoder_hidden_states=ctx.encoder_hidden_states,
            image_only_indicator=ctx.image_only_indicator,
        )
        cuts = {self._cut(b): b for b in self.branches}
        deep: dict[int, torch.Tensor] = {}
        for i in range(len(self._up)):
            if i in cuts:
                deep[cuts[i]] = hidden
            hidden = self._up_unit(i, hidden, skips, ctx)
        out = self._finish(hidden, batch_size, num_frames)
        return out, tuple(deep[b] for b in self.branches)

    def _shallow(
        self,
        branch: int,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        deep: torch.Tensor,
    ) -> torch.Tensor:
        """A retrieval step: down units ``0..branch``, then the up path from ``deep``."""
        hidden, ctx, batch_size, num_frames = self._prepare(
            sample, timestep, encoder_hidden_states, added_time_ids
        )
        skips = [hidden]
        for unit in self._down[:branch]:
            hidden = unit(hidden, ctx)
            skips.append(hidden)
        hidden = deep
        for i in range(self._cut(branch), len(self._up)):
            hidden = self._up_unit(i, hidden, skips, ctx)
        return self._finish(hidden, batch_size, num_frames)

    def _prepare(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, _Context, int, int]:
        """Embeddings and ``conv_in``, exactly as the U-Net's own forward makes them."""
        unet = self.unet
        # sample: [batch, frames, channels, height, width]
        batch_size, num_frames = sample.shape[:2]
        up_factor = 2**unet.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])

        timesteps = timestep if timestep.ndim else timestep[None]
        timesteps = timesteps.to(sample.device).expand(batch_size)
        t_emb = unet.time_proj(timesteps).to(dtype=sample.dtype)
        emb = unet.time_embedding(t_emb)
        time_embeds = unet.add_time_proj(added_time_ids.flatten())
        time_embeds = time_embeds.reshape((batch_size, -1)).to(emb.dtype)
        emb = emb + unet.add_embedding(time_embeds)

        # [batch, frames, ...] -> [batch * frames, ...]
        hidden = sample.flatten(0, 1)
        emb = emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(
            num_frames, dim=0, output_size=encoder_hidden_states.shape[0] * num_frames
        )
        ctx = _Context(
            temb=emb,
            encoder_hidden_states=encoder_hidden_states,
            image_only_indicator=torch.zeros(
                batch_size, num_frames, dtype=hidden.dtype, device=hidden.device
            ),
            forward_upsample_size=forward_upsample_size,
        )
        return unet.conv_in(hidden), ctx, batch_size, num_frames

    def _finish(self, hidden: torch.Tensor, batch_size: int, num_frames: int) -> torch.Tensor:
        unet = self.unet
        hidden = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
        # [batch * frames, ...] -> [batch, frames, channels, height, width]
        return hidden.reshape(batch_size, num_frames, *hidden.shape[1:])

    def _up_unit(
        self, i: int, hidden: torch.Tensor, skips: list[torch.Tensor], ctx: _Context
    ) -> torch.Tensor:
        skip_index = len(self._up) - 1 - i  # up unit i consumes skip n-1-i
        next_skip = skips[skip_index - 1] if skip_index > 0 else None
        return self._up[i](hidden, skips[skip_index], next_skip, ctx)


class _Shallow:
    """``UNetGraphs._shallow`` bound to one branch, so each branch compiles to its own graph."""

    def __init__(self, graphs: UNetGraphs, branch: int) -> None:
        self.graphs = graphs
        self.branch = branch

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        deep: torch.Tensor,
    ) -> torch.Tensor:
        return self.graphs._shallow(
            self.branch, sample, timestep, encoder_hidden_states, added_time_ids, deep
        )


FullForward = Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...]]]
ShallowForward = Callable[..., torch.Tensor]


class CachedUNet:
    """Runs an SVD U-Net step by step under a ``CacheSchedule`` (or none: every step full).

    Call it with the U-Net's arguments plus the 0-based step index; it keeps the deep feature of
    the last full step. One instance serves one video: make a new one per request, over the
    pipeline's long-lived ``UNetGraphs`` (compiled or not).
    """

    def __init__(
        self,
        unet: UNetSpatioTemporalConditionModel,
        schedule: CacheSchedule | None,
        graphs: UNetGraphs | None = None,
    ) -> None:
        self.schedule = schedule
        branches = (schedule.branch,) if schedule is not None else ()
        self.graphs = graphs or UNetGraphs(unet, branches)
        if schedule is not None and schedule.branch not in self.graphs.shallow:
            raise ValueError(f"these U-Net graphs have no branch {schedule.branch}")
        self._cached: torch.Tensor | None = None

    @property
    def num_skips(self) -> int:
        """How many skip connections the U-Net has (12 for SVD-XT)."""
        return self.graphs.num_skips

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        step: int,
    ) -> torch.Tensor:
        full = self.schedule is None or self._cached is None or self.schedule.is_full_step(step)
        return self.forward(sample, timestep, encoder_hidden_states, added_time_ids, full=full)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        *,
        full: bool,
    ) -> torch.Tensor:
        """One U-Net evaluation: the whole network if ``full``, else from the cached feature."""
        if full:
            out, deep = self.graphs.full(sample, timestep, encoder_hidden_states, added_time_ids)
            if self.schedule is not None:
                self._cached = deep[self.graphs.branches.index(self.schedule.branch)]
            return out
        if self.schedule is None or self._cached is None:
            raise RuntimeError("a retrieval step needs a full step before it")
        return self.graphs.shallow[self.schedule.branch](
            sample, timestep, encoder_hidden_states, added_time_ids, self._cached
        )
