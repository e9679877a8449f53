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

from collections.abc import Sequence
from dataclasses import dataclass

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


# The levels. Branch 1 at interval 3 is the setting the DeepCache authors published for
# SVD-XT; FLOP ratios are for the U-Net alone at 1024x576 (docs/deepcache.md).
LEVELS: dict[DeepCache, CacheSchedule | None] = {
    DeepCache.none: None,
    DeepCache.minimum: CacheSchedule(interval=2, branch=1),  # ~1.6x fewer U-Net FLOPs
    DeepCache.medium: CacheSchedule(interval=3, branch=1),  # ~2.0x
    DeepCache.high: CacheSchedule(interval=3, branch=0),  # ~2.6x
}


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


class CachedUNet:
    """Runs an SVD U-Net step by step under a ``CacheSchedule``.

    Call it with the U-Net's arguments plus the 0-based step index; it keeps the deep feature of
    the last full step. One instance serves one video: make a new one per request.
    """

    def __init__(self, unet: UNetSpatioTemporalConditionModel, schedule: CacheSchedule) -> None:
        self.unet = unet
        self.schedule = schedule
        self._down, self._up = _units(unet)
        if self.num_skips != len(self._up):
            raise ValueError("U-Net down and up paths do not pair up; not an SVD U-Net")
        if not 0 <= schedule.branch < self.num_skips - 1:
            raise ValueError(f"branch must be in 0..{self.num_skips - 2}, got {schedule.branch}")
        self._cached: torch.Tensor | None = None

    @property
    def num_skips(self) -> int:
        """How many skip connections the U-Net has (12 for SVD-XT): conv_in's and the units'."""
        return 1 + len(self._down)

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        step: int,
    ) -> torch.Tensor:
        full = self._cached is None or self.schedule.is_full_step(step)
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
        unet = self.unet
        # sample: [batch, frames, channels, height, width]
        batch_size, num_frames = sample.shape[:2]
        up_factor = 2**unet.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])

        # 1. time and added-time embeddings, exactly as the U-Net's own forward makes them
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

        # 2. down path: all of it on a full step, units 0..branch on a retrieval step
        hidden = unet.conv_in(hidden)
        skips = [hidden]
        depth = len(self._down) if full else self.schedule.branch  # units after conv_in
        for unit in self._down[:depth]:
            hidden = unit(hidden, ctx)
            skips.append(hidden)

        # 3. the deep part: mid block and deep up units, or the cached feature instead
        cut = len(self._up) - 1 - self.schedule.branch  # first up unit a retrieval step runs
        if full:
            hidden = unet.mid_block(
                hidden_states=hidden,
                temb=ctx.temb,
                encoder_hidden_states=ctx.encoder_hidden_states,
                image_only_indicator=ctx.image_only_indicator,
            )
            for i in range(cut):
                hidden = self._up_unit(i, hidden, skips, ctx)
            self._cached = hidden
        else:
            if self._cached is None:
                raise RuntimeError("a retrieval step needs a full step before it")
            hidden = self._cached

        # 4. shallow up path
        for i in range(cut, len(self._up)):
            hidden = self._up_unit(i, hidden, skips, ctx)

        # 5. post-process, back to [batch, frames, channels, height, width]
        hidden = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
        return hidden.reshape(batch_size, num_frames, *hidden.shape[1:])

    def _up_unit(
        self, i: int, hidden: torch.Tensor, skips: list[torch.Tensor], ctx: _Context
    ) -> torch.Tensor:
        skip_index = len(self._up) - 1 - i  # up unit i consumes skip n-1-i
        next_skip = skips[skip_index - 1] if skip_index > 0 else None
        return self._up[i](hidden, skips[skip_index], next_skip, ctx)
