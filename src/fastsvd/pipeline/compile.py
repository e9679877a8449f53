"""``torch.compile`` for the pipeline: which parts, when, and where the compiled code is kept.

``FASTSVD_COMPILE`` chooses (``parse``): ``0`` off; ``1`` whole graphs, on any device (the CPU
tests and ``fastsvd generate`` use it so); ``regional`` only the repeated blocks (the
spatio-temporal resnets and transformers, the SDXL transformer blocks), each compiled once and
reused by every block of its shape, which compiles faster and lets DeepCache's glue run eagerly;
unset: whole graphs on CUDA, off elsewhere.

What is compiled, always with ``fullgraph=True`` (a graph break is an error, not a slowdown) and
static shapes (``dynamic=False``):

- the video U-Net as ``deepcache.UNetGraphs``: one full forward, which also returns the deep
  features DeepCache keeps, and one shallow forward per cut. The step index is never an input
  and the timestep is a tensor, so neither the steps of a request nor two requests of one size
  recompile anything (``tests/pipeline/test_compile.py`` checks with dynamo's counters);
- the first-frame (SDXL) U-Net, and the decoders of both VAEs, in place (``Module.compile``).

Sizes: the worker warms the default ``video_size`` (and every ``deep_cache`` level) before it
reports ready (``core.VideoPipeline.warm_up``). Another size compiles its own static graphs on
its first request (the worker runs one request at a time; dynamo holds its own compile lock),
which then stay in memory and in the persisted cache, so it pays once per cache folder.

Compiled artifacts persist in inductor's cache, which ``use_cache_dir`` points under the data
folder: a restarted worker re-traces (seconds) but does not re-generate or re-build kernels.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastsvd.errors import FastSVDError

Backend = str | Callable[..., Any]


@dataclass(frozen=True)
class CompileOptions:
    """How to compile: ``backend`` (inductor, or a dynamo test backend) and the strategy."""

    backend: Backend = "inductor"
    regional: bool = False  # repeated blocks only, instead of whole graphs
    mode: str | None = None  # torch.compile's mode, e.g. "max-autotune-no-cudagraphs"
    first_frame: bool = True  # the SDXL U-Net
    decoders: bool = True  # both VAE decoders

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``torch.compile(fn)`` with these options."""
        compiled: Callable[..., Any] = torch.compile(
            fn, fullgraph=True, dynamic=False, backend=self.backend, mode=self.mode
        )
        return compiled

    def module(self, module: torch.nn.Module) -> None:
        """Compile ``module`` in place (its class and attributes stay as they are)."""
        module.compile(fullgraph=True, dynamic=False, backend=self.backend, mode=self.mode)


def parse(value: str | None, device: torch.device) -> CompileOptions | None:
    """``FASTSVD_COMPILE``'s meaning on ``device``: options, or None for eager."""
    value = (value or "").strip().lower()
    if value in ("", "auto"):
        return CompileOptions() if device.type == "cuda" else None
    if value in ("0", "off", "false", "no"):
        return None
    if value in ("1", "on", "true", "yes"):
        return CompileOptions()
    if value == "regional":
        return CompileOptions(regional=True)
    raise FastSVDError(f"FASTSVD_COMPILE must be 0, 1 or regional, got {value!r}")


def use_cache_dir(folder: Path) -> Path:
    """Keep inductor's compiled kernels and graphs (and Triton's) in ``folder``."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


def configure() -> None:
    """Dynamo settings for a server: room for a graph per size, persistent caches on."""
    # one static graph per (function, video_size); six fal presets plus custom sizes
    torch._dynamo.config.recompile_limit = 64
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True


REPEATED_BLOCKS = (
    "SpatioTemporalResBlock",
    "TransformerSpatioTemporalModel",
    "BasicTransformerBlock",
)


def compile_regions(module: torch.nn.Module, options: CompileOptions) -> int:
    """Compile every repeated block inside ``module`` in place; returns how many."""
    done: list[str] = []
    for name, sub in module.named_modules():
        inside = any(name.startswith(prefix + ".") for prefix in done)
        if type(sub).__name__ in REPEATED_BLOCKS and not inside:
            options.module(sub)  # the outermost repeated block; the ones inside it go along
            done.append(name)
    return len(done)
