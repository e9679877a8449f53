"""Speed-ups applied to loaded models, by name (``FASTSVD_OPTIMIZE=channels_last,...``).

Each one is meant to leave results unchanged up to floating-point noise; ``make test`` checks
that on the tiny preset against the stock pipelines. None is on by default until its gain is
measured on a GPU (``bench/gpu.py --optimize ...``; see docs/performance.md).

- ``channels_last``: the U-Nets' and VAEs' 2-D convolution weights in NHWC layout, which cuDNN's
  convolutions prefer on tensor cores.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from fastsvd.errors import FastSVDError

KNOWN = ("channels_last",)


def parse(value: str | None) -> tuple[str, ...]:
    """The names in a comma-separated list, checked."""
    names = tuple(n.strip() for n in (value or "").split(",") if n.strip())
    unknown = [n for n in names if n not in KNOWN]
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


def _channels_last(module: torch.nn.Module) -> None:
    # 2-D convolutions only: SVD's temporal layers hold 5-D weights, which have no NHWC form
    for conv in module.modules():
        if isinstance(conv, torch.nn.Conv2d):
            conv.to(memory_format=torch.channels_last)
