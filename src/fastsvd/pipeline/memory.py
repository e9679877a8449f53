"""The memory plan: chosen once at start from the GPU's total memory and the endpoints served.

It decides which models stay resident on the GPU and which wait on the CPU between stages
(moved in for their stage only), the decode chunk (frames per temporal-VAE call, from a few fixed
values, so a seed's frames never depend on what ran before), which endpoints fit, and the
largest ``video_size`` (in pixels) a request may ask for.

What it counts:

- **weights, exactly**: every model's parameters and floating buffers, counted on the bundled
  configs (``pipeline/configs``) with the models built on the meta device (no memory, no
  download), times the dtype's bytes;
- **activations, estimated** (the ``*_BYTES_PER_PIXEL_BYTE`` and ``RESERVE_BYTES`` constants,
  named as estimates): the first-frame stage, the video U-Net and the temporal decoder per frame,
  each linear in the request's pixels. A device run replaces them with measured peaks.
- **the decoders' fp32 upcast on an fp16 card** (below compute capability 8.0): a VAE whose
  config sets ``force_upcast`` (both bundled ones do) is moved to fp32 for its decode
  (``video.vae_upcast``; diffusers' SDXL pipeline does the same), so while it decodes its weights
  take 4 bytes a number and its activations are counted at 4 bytes, not 2. bf16 has no upcast.

A plan is tried in this order until one fits at fal's default size (1024x576): the decode chunk
from the preset's down (8, 4, 2, 1; fewer frames per call flicker more), and for each chunk the
memory modes from the fastest (``resident``) to the leanest (``offload-unets``), since offloading
costs only the copy to the GPU per request, while the chunk changes the frames.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from fastsvd.constants import MEMORY_MODES
from fastsvd.errors import DoesNotFit, FastSVDError, InvalidInput
from fastsvd.hooks import Stage
from fastsvd.pipeline import model_configs
from fastsvd.pipeline.presets import FAMILIES, MODEL_STAGES, ModelKey, model_key

GiB = 1024**3

# Estimates, per output pixel (width x height) and per byte of the dtype, until a device run
# measures them (bench/gpu.py): SDXL's U-Net with guidance plus its VAE decode of one picture
# (about 3 GiB at 1024x1024 in bf16; counted at the decoder's bytes, which on an fp16 card are
# fp32's: the U-Net's share is then over-counted, on the safe side); SVD's U-Net on 25 frames
# with guidance (about 4 GiB at 1024x576); the temporal VAE decoder per frame of a chunk (its
# 128-channel full-resolution activations, a few alive at once: about 0.84 GiB per frame at
# 1024x576 in bf16, twice that upcast to fp32).
FIRST_FRAME_BYTES_PER_PIXEL_BYTE = 1536
VIDEO_UNET_BYTES_PER_PIXEL_BYTE = 3600
DECODE_BYTES_PER_PIXEL_BYTE = 768
# Estimate: the CUDA context, cuBLAS/cuDNN workspaces and the allocator's fragmentation.
RESERVE_BYTES = int(1.5 * GiB)

DECODE_CHUNKS = (8, 4, 2, 1)  # frames per temporal-VAE call; a plan picks one of these
DEFAULT_SIZE = (1024, 576)  # fal's default video_size (landscape_16_9): every plan fits it
PIXELS_MAX = 1024 * 1024  # the largest size a request can ask for (constants.PIXELS_MAX)

# The parts a plan places: each model's own U-Net, and by component the parts the models of a
# stage share (one VAE, image encoder, text encoder pair whatever the family).
_SHARED_COMPONENTS = {
    Stage.first_frame: {
        "text_encoder": "text_encoders",  # SDXL's two CLIP text encoders: one part
        "text_encoder_2": "text_encoders",
        "vae": "first_frame_vae",
    },
    Stage.video: {"image_encoder": "image_encoder", "vae": "video_vae"},
}
SHARED_PARTS = {stage: tuple(dict.fromkeys(t.values())) for stage, t in _SHARED_COMPONENTS.items()}


def unet_part(model: ModelKey) -> str:
    """The part of a model's own U-Net: ``video_unet``, ``few_step_first_frame_unet``..."""
    return f"{model_key(*model)}_unet"


def component_parts(model: ModelKey) -> dict[str, str]:
    """The components of a model's pipeline that a plan places, and the part each one is."""
    return {"unet": unet_part(model), **_SHARED_COMPONENTS[model[1]]}


FIRST_FRAME_PARTS = (
    *(unet_part((family, Stage.first_frame)) for family in FAMILIES),  # SDXL, SDXL-Lightning
    *SHARED_PARTS[Stage.first_frame],
)
VIDEO_UNETS = tuple(unet_part((f, Stage.video)) for f in FAMILIES)  # SVD-XT, AnimateLCM-SVD-xt
VIDEO_PARTS = (*VIDEO_UNETS, *SHARED_PARTS[Stage.video])
PARTS = (*FIRST_FRAME_PARTS, *VIDEO_PARTS)
# Each VAE part's bundled config (model_configs): its force_upcast says whether fp16 decodes fp32.
VAE_CONFIGS = {"video_vae": model_configs.SVD_XT, "first_frame_vae": model_configs.SDXL_BASE}
FP32_BYTES = 4

# Memory modes: the parts that wait on the CPU between stages (FASTSVD_MEMORY_MODE).
MODES: dict[str, frozenset[str]] = dict(
    zip(
        MEMORY_MODES,
        (
            frozenset(),  # resident
            frozenset(FIRST_FRAME_PARTS),  # offload-first-frame
            frozenset((*FIRST_FRAME_PARTS, *VIDEO_UNETS)),  # offload-unets
        ),
        strict=True,
    )
)


# Which models to load or plan for: (family, stage) pairs (``presets.Capability.models``).
Models = frozenset[ModelKey]
ALL_MODELS: Models = frozenset((f, stage) for f in FAMILIES for stage in MODEL_STAGES)
NO_MODELS: Models = frozenset()


def pipes(models: Models) -> list[tuple[Stage, tuple[str, ...]]]:
    """Each model's stage and parts: what must be on the GPU while it runs."""
    return [
        (stage, (unet_part((family, stage)), *SHARED_PARTS[stage]))
        for stage in MODEL_STAGES
        for family in FAMILIES
        if (family, stage) in models
    ]


def parts(models: Models) -> frozenset[str]:
    """The parts of ``models``."""
    return frozenset(part for _stage, stage_parts in pipes(models) for part in stage_parts)


@functools.cache
def part_parameters() -> dict[str, int]:
    """Each part's parameter and floating-buffer count, on the bundled configs (meta tensors)."""
    import torch

    from fastsvd.pipeline import full_size

    meta = torch.device("meta")
    video = full_size.build_video(meta, torch.float32)
    first = full_size.build_first_frame(meta, torch.float32)

    def count(*modules: torch.nn.Module) -> int:
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        return sum(t.numel() for t in tensors if t.is_floating_point())

    # every family's U-Net keeps its stage's architecture (AnimateLCM SVD-XT's,
    # SDXL-Lightning SDXL's)
    return {
        **{part: count(video.unet) for part in VIDEO_UNETS},
        "image_encoder": count(video.image_encoder),
        "video_vae": count(video.vae),
        **{unet_part((f, Stage.first_frame)): count(first.unet) for f in FAMILIES},
        "text_encoders": count(first.text_encoder, first.text_encoder_2),
        "first_frame_vae": count(first.vae),
    }


def weight_bytes(dtype_bytes: int) -> dict[str, int]:
    """Each part's weights in bytes, in a dtype of ``dtype_bytes`` per number."""
    return {part: n * dtype_bytes for part, n in part_parameters().items()}


@functools.cache
def upcast_vaes() -> frozenset[str]:
    """The VAE parts that decode in fp32 when loaded in fp16: their configs set force_upcast."""
    return frozenset(
        part
        for part, model in VAE_CONFIGS.items()
        if model_configs.load(model, "vae").get("force_upcast", False)
    )


@dataclass(frozen=True)
class Plan:
    """Where the models live, the decode chunk and what fits, for one worker."""

    total_bytes: int | None  # the GPU's memory; None: no GPU (the plan places nothing)
    mode: str  # a key of MODES
    decode_chunk: int
    endpoints: tuple[str, ...]  # those served
    left_out: tuple[str, ...]  # those asked for that do not fit
    max_pixels: int  # the largest width x height a request may ask for
    resident_bytes: int  # weights on the GPU between requests (exact)
    peak_bytes: int  # estimated peak at the default size (weights exact, activations not)

    @property
    def offloaded(self) -> frozenset[str]:
        """The parts that wait on the CPU between stages."""
        return MODES[self.mode] if self.total_bytes is not None else frozenset()

    def describe(self) -> str:
        """One line for the start log and ``fastsvd doctor``."""
        if self.total_bytes is None:
            return f"no GPU: models in place, decode chunk {self.decode_chunk}"
        left = f"; left out (no room): {', '.join(self.left_out)}" if self.left_out else ""
        return (
            f"{self.mode}, decode chunk {self.decode_chunk}, {_gib(self.resident_bytes)} "
            f"resident, peak ~{_gib(self.peak_bytes)} (estimate) of {_gib(self.total_bytes)}, "
            f"sizes up to {self.max_pixels} pixels{left}"
        )

    def check_size(self, width: int, height: int) -> None:
        """Refuse a size this plan has no room for (422, naming the limit and why)."""
        if width * height > self.max_pixels:
            raise InvalidInput(
                "video_size",
                f"{width}x{height} needs more GPU memory than this server's "
                f"{_gib(self.total_bytes or 0)} GPU has room for in its memory plan "
                f"({self.mode}): at most {self.max_pixels} pixels (width x height), "
                f"e.g. {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}",
            )


def cpu_plan(endpoints: Mapping[str, Models], decode_chunk: int) -> Plan:
    """No GPU: everything stays where it is loaded, the preset's chunk, no size limit."""
    return Plan(None, "resident", decode_chunk, tuple(endpoints), (), PIXELS_MAX, 0, 0)


def choose(
    total_bytes: int,
    endpoints: Mapping[str, Models],
    *,
    dtype_bytes: int,
    preset_chunk: int,
    mode: str | None = None,
    explicit: bool = False,
    weights: Mapping[str, int] | None = None,
    fp16: bool = False,
) -> Plan:
    """The plan for a GPU of ``total_bytes`` serving ``endpoints`` (id -> models it needs).

    ``mode`` fixes the memory mode (None: the first that fits). When the endpoints were not
    named by the operator (``explicit`` False), the largest subset that fits is served, the
    others left out; named ones that do not fit raise ``DoesNotFit`` saying what would.
    ``weights`` (part -> bytes) defaults to the bundled configs' counts. ``fp16``: the models
    run in fp16 (``dtype_bytes`` 2, below compute capability 8.0), so the VAEs that ask for it
    decode in fp32 (``upcast_vaes``).
    """
    if mode is not None and mode not in MODES:
        raise FastSVDError(
            f"FASTSVD_MEMORY_MODE must be auto or one of {', '.join(MODES)}, got {mode!r}"
        )
    weights = weight_bytes(dtype_bytes) if weights is None else weights
    ids = tuple(endpoints)
    for size in range(len(ids), 0, -1):
        if size < len(ids) and (explicit or mode is not None):
            break  # no silent narrowing of what the operator named: say what would fit
        for subset in itertools.combinations(ids, size):
            plan = _first_fit(total_bytes, endpoints, subset, dtype_bytes, preset_chunk, mode,
                              weights, fp16)  # fmt: skip
            if plan is not None:
                return plan
    raise DoesNotFit(
        _advice(total_bytes, endpoints, dtype_bytes, preset_chunk, mode, weights, fp16)
    )


def _first_fit(
    total_bytes: int,
    endpoints: Mapping[str, Models],
    served: tuple[str, ...],
    dtype_bytes: int,
    preset_chunk: int,
    mode: str | None,
    weights: Mapping[str, int],
    fp16: bool,
) -> Plan | None:
    models = NO_MODELS.union(*(endpoints[endpoint] for endpoint in served))
    chunks = [c for c in DECODE_CHUNKS if c <= preset_chunk] or [1]
    modes = list(MODES) if mode is None else [mode]
    budget = total_bytes - RESERVE_BYTES
    default_pixels = DEFAULT_SIZE[0] * DEFAULT_SIZE[1]
    for chunk in chunks:
        for name in modes:
            offloaded = MODES[name]
            stages = _stages(models, offloaded, chunk, dtype_bytes, weights, fp16)
            max_pixels = min(
                [PIXELS_MAX] + [(budget - fixed) // per_pixel for fixed, per_pixel in stages]
            )
            if max_pixels < default_pixels:
                continue
            resident = sum(weights[p] for p in parts(models) - offloaded)
            peak = max(fixed + per_pixel * default_pixels for fixed, per_pixel in stages)
            left_out = tuple(e for e in endpoints if e not in served)
            return Plan(total_bytes, name, chunk, served, left_out, max_pixels, resident, peak)
    return None


def _stages(
    models: Models,
    offloaded: frozenset[str],
    chunk: int,
    dtype_bytes: int,
    weights: Mapping[str, int],
    fp16: bool,
) -> list[tuple[int, int]]:
    """Each stage's memory as (bytes regardless of size, bytes per pixel): the first frame, the
    video U-Net, the decode (the video U-Net stays in while the decoder runs)."""
    resident = sum(weights[p] for p in parts(models) - offloaded)

    def decoding(vae: str) -> tuple[int, int]:
        """The VAE's bytes per number while it decodes, and its weights' extra bytes then."""
        if not (fp16 and vae in upcast_vaes()):
            return dtype_bytes, 0
        return FP32_BYTES, weights[vae] * (FP32_BYTES - dtype_bytes) // dtype_bytes

    stages = []
    for stage, stage_parts in pipes(models):
        fixed = resident + sum(weights[p] for p in stage_parts if p in offloaded)
        if stage is Stage.first_frame:
            decode_bytes, upcast = decoding("first_frame_vae")
            stages.append((fixed + upcast, FIRST_FRAME_BYTES_PER_PIXEL_BYTE * decode_bytes))
        else:
            decode_bytes, upcast = decoding("video_vae")
            stages.append((fixed, VIDEO_UNET_BYTES_PER_PIXEL_BYTE * dtype_bytes))
            per_pixel = chunk * DECODE_BYTES_PER_PIXEL_BYTE * decode_bytes
            stages.append((fixed + upcast, per_pixel))
    return stages


def _advice(
    total_bytes: int,
    endpoints: Mapping[str, Models],
    dtype_bytes: int,
    preset_chunk: int,
    mode: str | None,
    weights: Mapping[str, int],
    fp16: bool,
) -> str:
    """What would fit, as settings: a memory mode, else the endpoints that fit."""
    asked = f"{', '.join(endpoints)} do not fit a {_gib(total_bytes)} GPU"
    asked += f" in memory mode {mode}" if mode is not None else " in any memory mode"
    if mode is not None:
        try:
            fits = choose(total_bytes, endpoints, dtype_bytes=dtype_bytes,
                          preset_chunk=preset_chunk, weights=weights, fp16=fp16)  # fmt: skip
        except DoesNotFit:
            pass
        else:
            if not fits.left_out:
                return f"{asked}; set FASTSVD_MEMORY_MODE={fits.mode} (or auto)"
    for size in range(len(endpoints) - 1, 0, -1):
        for subset in itertools.combinations(endpoints, size):
            for name in MODES:
                plan = _first_fit(total_bytes, endpoints, subset, dtype_bytes, preset_chunk,
                                  name, weights, fp16)  # fmt: skip
                if plan is not None:
                    return (
                        f"{asked}; set FASTSVD_ENDPOINTS={','.join(subset)} and "
                        f"FASTSVD_MEMORY_MODE={name}, or use a larger GPU"
                    )
    return f"{asked}, not even one endpoint; use a GPU with more memory"


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"
