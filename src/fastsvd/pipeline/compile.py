"""``torch.compile`` for the pipeline: which parts, when, and what happens when it fails.

``FASTSVD_COMPILE`` chooses (``parse``): ``0`` off; ``1`` whole graphs, on any device (the CPU
tests use it so); ``regional`` only the repeated blocks (the spatio-temporal resnets and
transformers, the SDXL transformer blocks), each compiled once and reused by every block of its
shape, which compiles faster and lets DeepCache's glue run eagerly; unset: whole graphs on CUDA
for a worker, off for ``fastsvd generate`` (which compiles only when asked).

What is compiled, with ``fullgraph=True`` and static shapes (``dynamic=False``):

- the video U-Net as ``deepcache.UNetGraphs``: one full forward, which also returns the deep
  features DeepCache keeps, and one shallow forward per cut. The step index is never an input
  and the timestep is a tensor, so neither the steps of a request nor two requests of one size
  recompile anything (``tests/pipeline/test_compile.py`` checks with dynamo's counters);
- the first-frame (SDXL) U-Nets, the few-step video U-Net, and the decoders of both VAEs.

**The policy: serve eagerly at once, compile between jobs, swap in when done.** Every compiled
callable is a ``Guarded`` one; a pipeline's run the eager code until they are swapped in. A
worker on a fresh host reports ready as soon as its models are loaded; when it has no job, it
runs the warm-up requests at fal's default size (``core.VideoPipeline.warm_up_steps``) one at a
time, so a request that arrives meanwhile waits for at most one of them (the cold compile of its
graphs: minutes on a GPU, an estimate until the device run measures it), then the compiled
graphs are swapped in, all at once. A restarted worker whose persisted cache (below) holds a
finished warm-up of the same models warms up before ready instead, from the cache (seconds of
tracing).

Sizes: only the shapes seen during the warm-up (the default ``video_size``) run compiled; every
other size runs eagerly, so no number of custom sizes recompiles anything or reaches dynamo's
recompile limit. Any dynamo or inductor failure (the recompile limit, a graph break, a lowering
error) turns that one graph back to eager for good, with one warning in the log; the call that
met it is re-run eagerly, so no request fails because of compilation.

Compiled artifacts persist in inductor's cache, which ``use_cache_dir`` points under the data
folder: a restarted worker re-traces (seconds) but does not re-generate or re-build kernels.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastsvd.errors import FastSVDError
from fastsvd.settings import flag

log = logging.getLogger("fastsvd.compile")

Backend = str | Callable[..., Any]


@dataclass(frozen=True)
class CompileOptions:
    """How to compile: ``backend`` (inductor, or a dynamo test backend) and the strategy."""

    backend: Backend = "inductor"
    regional: bool = False  # repeated blocks only, instead of whole graphs
    mode: str | None = None  # torch.compile's mode, e.g. "max-autotune-no-cudagraphs"
    first_frame: bool = True  # the SDXL U-Net
    decoders: bool = True  # both VAE decoders

    guards: list[Guarded] = field(default_factory=list, compare=False, repr=False)

    def wrap(self, fn: Callable[..., Any], name: str | None = None) -> Guarded:
        """``torch.compile(fn)`` with these options, guarded (no compile error escapes)."""
        compiled = torch.compile(
            fn, fullgraph=True, dynamic=False, backend=self.backend, mode=self.mode
        )
        guarded = Guarded(name or str(getattr(fn, "__qualname__", type(fn).__name__)), fn, compiled)
        self.guards.append(guarded)
        return guarded

    def module(self, module: torch.nn.Module) -> None:
        """Compile ``module`` in place (its class and attributes stay as they are): what
        ``Module.compile`` does, with the compiled call guarded."""
        module._compiled_call_impl = self.wrap(module._call_impl, type(module).__name__)


class GraphState(enum.Enum):
    """Where a ``Guarded`` callable sends its calls."""

    eager = "eager"  # not swapped in yet: the eager code
    warming = "warming"  # compiling: every call goes through the compiled code, shapes noted
    compiled = "compiled"  # swapped in: the noted shapes compiled, any other eagerly
    failed = "failed"  # compiling failed once: eager for good


class Guarded:
    """A compiled callable that never fails a call because of compilation."""

    def __init__(self, name: str, eager: Callable[..., Any], compiled: Callable[..., Any]):
        self.name = name
        self.eager = eager
        self.compiled = compiled
        # compiling on every call, as torch.compile does, until its owner says otherwise (a
        # pipeline holds its graphs eager until its warm-up: VideoPipeline.compile)
        self.state = GraphState.warming
        self.shapes: set[tuple[Any, ...]] = set()  # the inputs' shapes it was warmed at
        self.eager_calls = 0  # calls that ran the eager code (for tests and the log)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = _shapes(args, kwargs)
        if self.state is GraphState.warming or (
            self.state is GraphState.compiled and key in self.shapes
        ):
            try:
                result = self.compiled(*args, **kwargs)
            except Exception as exc:
                if not is_compile_error(exc):
                    raise
                self.state = GraphState.failed
                log.warning(
                    "compiling %s failed; it runs eagerly from now on (%s: %s)",
                    self.name,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
            else:
                if self.state is GraphState.warming:
                    self.shapes.add(key)
                return result
        self.eager_calls += 1
        return self.eager(*args, **kwargs)


def set_state(guards: Iterable[Guarded], state: GraphState) -> None:
    """Move every guard that has not failed to ``state`` (warming, or swapped in)."""
    for guard in guards:
        if guard.state is not GraphState.failed:
            guard.state = state


def _compile_errors() -> tuple[type[BaseException], ...]:
    import torch._dynamo.exc as dynamo

    # FailOnRecompileLimitHit derives from Exception, not from dynamo's base class
    errors: list[type[BaseException]] = [
        dynamo.TorchDynamoException,
        dynamo.FailOnRecompileLimitHit,
    ]
    try:
        from torch._inductor.exc import InductorError

        errors.append(InductorError)
    except ImportError:  # older torch wraps inductor's errors in dynamo's
        pass
    return tuple(errors)


def is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from dynamo or inductor (not from the model's own code)."""
    return isinstance(exc, _compile_errors())


def _shapes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The shapes, dtypes and devices of the tensor arguments: what a static graph is for."""
    values = [*args, *(kwargs[k] for k in sorted(kwargs))]
    return tuple(
        (tuple(v.shape), v.dtype, v.device.type) if isinstance(v, torch.Tensor) else None
        for v in values
    )


def parse(
    value: str | None, device: torch.device, *, serving: bool = True
) -> CompileOptions | None:
    """``FASTSVD_COMPILE``'s meaning on ``device``: options, or None for eager. Unset, a
    worker (``serving``) compiles on CUDA; ``fastsvd generate`` does not."""
    value = (value or "").strip().lower()
    if value in ("", "auto"):
        return CompileOptions() if device.type == "cuda" and serving else None
    if value == "regional":
        return CompileOptions(regional=True)
    try:
        on = flag(value)
    except ValueError:
        raise FastSVDError(f"FASTSVD_COMPILE must be 0, 1 or regional, got {value!r}") from None
    return CompileOptions() if on else None


def use_cache_dir(folder: Path) -> Path:
    """Keep inductor's compiled kernels and graphs (and Triton's) in ``folder``."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


def configure() -> None:
    """Dynamo settings for a server: room for a graph per size, persistent caches on."""
    # one static graph per (function, shape); other sizes never reach dynamo (``Guarded``)
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
