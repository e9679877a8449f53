"""Speed-ups applied to loaded models, by name (``FASTSVD_OPTIMIZE=channels_last,...``).

Each one is meant to leave results unchanged up to floating-point noise; ``make test`` checks
that on the tiny preset against the stock pipelines. None is on by default until its gain is
measured on a GPU (``bench/gpu.py --optimize ...``; see docs/performance.md).

- ``channels_last``: the U-Nets' and VAEs' 2-D convolution weights in NHWC layout, which cuDNN's
  convolutions prefer on tensor cores.
- ``fuse_qkv``: each self-attention's query, key and value projections as one matrix product
  (key and value for cross-attention), diffusers' ``FusedAttnProcessor2_0``; every U-Net.
- ``fp8`` (lossy, CUDA with compute capability >= 8.9 only): torchao's float8 dynamic
  quantisation (activations and weights, per row) of the video U-Nets' linear layers. Its
  deviation from bf16 is measured by the device run (``bench/gpu.py --call 2``), not
  promised.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from fastsvd.errors import FastSVDError

KNOWN = ("channels_last", "fuse_qkv", "fp8")


def parse(value: str | None) -> tuple[str, ...]:
    """The names in a comma-separated list, checked."""
    names = tuple(n.strip() for n in (value or "").split(",") if n.strip())
    unknown = [n for n in names if n not in KNOWN]
    if "low_memory" in unknown:  # what it did is the memory plan's now
        raise FastSVDError(
            "low_memory is no longer an optimization: the memory plan decides what waits on "
            "the CPU (FASTSVD_MEMORY_MODE=offload-first-frame; FASTSVD_OPTIMIZE)"
        )
    if unknown:
        raise FastSVDError(
            f"unknown optimization {unknown[0]!r}; known: {', '.join(KNOWN)} (FASTSVD_OPTIMIZE)"
        )
    return names


def apply(pipes: Iterable[Any], names: Iterable[str]) -> None:
    """Apply the named optimizations to the diffusers pipelines ``pipes`` (None ones skipped)."""
    names = set(names)
    for pipe in pipes:
        if pipe is None:
            continue
        if "channels_last" in names:
            for part in ("unet", "vae"):
                module = getattr(pipe, part, None)
                if module is not None:
                    _channels_last(module)
        if "fuse_qkv" in names:
            _fuse_qkv(pipe.unet)
        if "fp8" in names and _is_video(pipe):  # the video U-Nets only
            _fp8(pipe.unet)


def _is_video(pipe: Any) -> bool:
    from diffusers import StableVideoDiffusionPipeline

    # not hasattr(pipe, "image_encoder"): SDXL pipelines have one too, set to None
    return isinstance(pipe, StableVideoDiffusionPipeline)


def _channels_last(module: torch.nn.Module) -> None:
    # 2-D convolutions only: SVD's temporal layers hold 5-D weights, which have no NHWC form
    for conv in module.modules():
        if isinstance(conv, torch.nn.Conv2d):
            conv.to(memory_format=torch.channels_last)


def _fuse_qkv(unet: torch.nn.Module) -> None:
    from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

    for attention in unet.modules():
        if isinstance(attention, Attention):
            attention.fuse_projections(fuse=True)
    unet.set_attn_processor(FusedAttnProcessor2_0())


def _fp8(unet: torch.nn.Module) -> None:
    device = next(unet.parameters()).device
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise FastSVDError(
            "fp8 needs a CUDA GPU of compute capability 8.9 or newer (FASTSVD_OPTIMIZE)"
        )
    try:
        from torchao.quantization import (  # type: ignore[import-not-found]
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            quantize_,
        )
    except ImportError as exc:
        raise FastSVDError("fp8 needs torchao installed (pip install torchao)") from exc
    quantize_(unet, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
